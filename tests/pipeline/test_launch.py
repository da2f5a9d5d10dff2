"""pipeline/launch.py, the launcher `make train NPROC=N` uses: torchrun's own, whose failures
end in one line and the worker's exit status (real processes: 2 gloo workers)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pipeline.tokenize import manifest
from tests.conftest import REPO
from tests.model.train_fixtures import tiny_values, write_config_yaml, write_tiny_shards

ENV = {"CODEGPT_SKIP_SMOKE_CHECK": "1", "CODEGPT_LOG": "WARNING", "OMP_NUM_THREADS": "1"}


def launch(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pipeline.launch", "--standalone", "--nproc_per_node=2", *args]
    env = {**os.environ, **ENV}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_an_error_every_rank_meets_is_said_once_with_its_exit_status(tmp_path: Path) -> None:
    """Both ranks refuse the shards (a tokenizer the model cannot hold): rank 0's line alone,
    exit 2 (torchrun's own: 1 and a failure block of some 30 lines)."""
    data = write_tiny_shards(tmp_path / "shards")
    manifest.write_for_shards(data, {"name": "o200k", "n_vocab": 200_019})
    config = write_config_yaml(tmp_path / "c.yaml", tiny_values(data, tmp_path / "run"))
    done = launch("-m", "pipeline", "train", "--config", str(config))
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("codegpt train: error: ") and "tokenizer 'o200k' has 200,019 ids" in line


def test_a_worker_that_fails_without_our_line_is_named_in_one_line(tmp_path: Path) -> None:
    """A worker that fails by itself (json.tool on a missing file: its usage error, exit 2):
    its own output, then one line naming the rank and the code (no traceback of the
    launcher, no failure block), and the worker's exit status."""
    done = launch("-m", "json.tool", str(tmp_path / "none.json"))
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"codegpt launch: rank [01] \(pid \d+\) exited with code 2", last), last
    assert "No such file or directory" in done.stderr  # the worker's own words stay
    assert "Traceback" not in done.stderr and "Root Cause" not in done.stderr
