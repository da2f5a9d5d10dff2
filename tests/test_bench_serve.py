"""bench/serve_gpu.py's CPU dry run (a tiny model): the whole measurement runs, server
process, streaming clients and the sample baseline, and writes its table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_bench_train import run_bench


@pytest.mark.slow
def test_the_gpu_serving_bench_dry_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "serve-gpu.md"
    args = ["--clients", "2", "--requests", "1", "--tokens", "8", "--repeats", "2"]
    run_bench("serve_gpu.py", out, *args)
    text = out.read_text()
    rows = [
        ln.split("|")[1:3]
        for ln in text.splitlines()
        if ln.startswith("| 1 |") or ln.startswith("| 2 |")
    ]
    assert [[c.strip() for c in r] for r in rows] == [
        ["1", "1"],
        ["1", "2"],
        ["2", "1"],
        ["2", "2"],
    ]
    assert "2 clients against 1" in text and "against `make sample`" in text
