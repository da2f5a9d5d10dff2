"""bench/loader_bench.py on a small stream: it runs and writes its two tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_the_loader_bench_runs_and_writes_both_tables(tmp_path: Path) -> None:
    out = tmp_path / "loader.md"
    cmd = [sys.executable, "bench/loader_bench.py", "--seconds", "0.2", "--tokens", "60000"]
    done = subprocess.run([*cmd, "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    loader = [r for r in rows if r.split("|")[1].strip() in {"0", "0.5", "1"}]
    assert [r.split("|")[1].strip() for r in loader] == ["0", "0.5", "0.5", "1", "1"]
    assert sum("RTX 4070" in r or "H100" in r or "RTX 4090" in r for r in rows) == 3
