"""Exact resume: a run killed with SIGKILL and rerun ends bitwise equal to an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import MODEL, list_checkpoints, load_latest
from model.config import build
from model.metrics import read_metrics
from model.train_config import TrainConfig
from pipeline.train import train
from tests.conftest import REPO
from tests.model.train_fixtures import (
    FIM_ON,
    kill_after_first_checkpoint,
    tiny_values,
    write_code_shards,
    write_config_yaml,
    write_tiny_shards,
)

TIMING = ("ms", "tokens_per_s")


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    found = load_latest(run)
    assert found is not None
    return found[0][MODEL]  # type: ignore[no-any-return]


@pytest.mark.slow
# (optimizer, FIM on GPT-2 shards of real code, or the counting stream without it)
@pytest.mark.parametrize(("optimizer", "fim"), [("adamw", False), ("muon", False), ("muon", True)])
def test_sigkill_midway_then_rerun_is_bitwise_identical(
    tmp_path: Path, optimizer: str, fim: bool
) -> None:
    data = (write_code_shards if fim else write_tiny_shards)(tmp_path / "shards")
    # log_interval 7 does not divide ckpt_interval 10: a resume starts mid-interval, so the
    # logged interval means need the checkpoint's loss window; shuffle is on (the default)
    values = tiny_values(
        data,
        tmp_path / "killed",
        max_iters=40 if fim else 150,  # FIM's full-vocabulary steps cost 3x: killed at 10
        ckpt_interval=10,
        keep_ckpts=2,
        log_interval=7,
        optimizer=optimizer,
        **FIM_ON if fim else {},
    )
    assert build(TrainConfig, values).shuffle
    config = write_config_yaml(tmp_path / "killed.yaml", values)
    env = {**os.environ, "CODEGPT_SKIP_SMOKE_CHECK": "1", "CODEGPT_LOG": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", "--config", str(config)],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
    )
    kill_after_first_checkpoint(
        proc, tmp_path / "killed", lambda: os.kill(proc.pid, signal.SIGKILL), 0.05, 120
    )
    killed_at = list_checkpoints(tmp_path / "killed")
    assert killed_at and max(p.name for p in killed_at) < f"ckpt-{values['max_iters']:08d}.pt"

    assert train(build(TrainConfig, values)) == 0  # the rerun resumes by itself
    reference = dict(values, out_dir=str(tmp_path / "straight"))
    assert train(build(TrainConfig, reference)) == 0

    a, b = _final_weights(tmp_path / "killed"), _final_weights(tmp_path / "straight")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ma = [
        {k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(tmp_path / "killed")
    ]
    mb = [
        {k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(tmp_path / "straight")
    ]
    assert ma == mb  # the metrics file matches an uninterrupted run's, no duplicates
