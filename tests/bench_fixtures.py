"""Running the benches' CPU dry runs from the tests: one bench script, or the prepared GPU
session (bench/gpu_session.sh), whose dry run is made once per test session and read by
every test that runs the same step with the same arguments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, Shared


def run_bench(script: str, out: Path, *args: str) -> None:
    """`python bench/<script> --tiny ARGS --out OUT`, which must succeed."""
    cmd = [sys.executable, f"bench/{script}", "--tiny", *args, "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def session(part: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`bash bench/gpu_session.sh EXTRA PART` with OUT and this interpreter."""
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    cmd = ["bash", "bench/gpu_session.sh", *extra, part]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def dry_run(shared: Shared, part: str) -> Path:
    """A folder with `out/` (what the session's --dry-run of `part` returns) and `rc` (its
    exit status, then the ends of its output), made once per test session."""

    def build(folder: Path) -> None:
        done = session(part, folder / "out", "--dry-run")
        log = done.stdout[-2000:] + done.stderr[-3000:]
        (folder / "rc").write_text(f"{done.returncode}\n{log}")

    return shared.get(f"gpu-session-dry-run-{part}", build)
