"""`python -m pipeline serve`'s start: the one-line errors a user can cause."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import main
from tests.conftest import REPO
from tests.pipeline.serve.conftest import free_port


def test_no_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", f"out_dir={tmp_path / 'nothing'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codegpt serve: error: ") and "train first" in err
    assert err.count("\n") == 1


def test_a_taken_port_is_one_line(fim_run: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        cmd = [sys.executable, "-m", "pipeline", "serve", f"out_dir={fim_run}", f"port={port}"]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("codegpt serve: error: cannot listen on 127.0.0.1:")
    assert "give another port=" in last


def test_cpu_threads_leave_a_core_to_http_unless_told() -> None:
    from pipeline.serve.stage import cpu_threads

    assert cpu_threads(0, {}, 2) == 1  # this box: the loop and the client get a core
    assert cpu_threads(0, {}, 16) == 15
    assert cpu_threads(0, {}, 1) == 1
    assert cpu_threads(0, {"OMP_NUM_THREADS": "2"}, 2) == 2  # an explicit count wins
    assert cpu_threads(3, {"OMP_NUM_THREADS": "2"}, 2) == 3  # and threads= over both
