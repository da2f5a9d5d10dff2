"""bench/serve_gpu.py's CPU dry run (a tiny model): the whole measurement runs, server
process, streaming clients and the sample baseline, and writes its table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_bench_train import run_bench


@pytest.mark.slow
def test_the_gpu_serving_bench_dry_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "serve-gpu.md"
    run_bench("serve_gpu.py", out, "--clients", "2", "--requests", "1", "--tokens", "8")
    text = out.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| 1 |") or ln.startswith("| 2 |")]
    assert len(rows) == 2 and "2 clients against 1" in text and "against `make sample`" in text
