"""The smoke stage: passes on a sane tiny run, fails with its numbers on a broken model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import rundir, trainer
from model.checkpoint import list_checkpoints
from model.errors import CheckFailed, StateError
from model.gpt import GPT, GPTConfig
from pipeline import smoke
from pipeline import train as train_stage
from tests.model.train_fixtures import tiny_config


def test_smoke_passes_writes_the_stamp_and_leaves_no_checkpoint(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(shards, tmp_path / "run")
    report = smoke.run_smoke(cfg)
    assert report.losses[0] - report.losses[-1] >= cfg.smoke_min_drop
    assert report.roundtrip[0] == pytest.approx(report.roundtrip[1], abs=1e-6)
    assert len(report.sample) == smoke.SAMPLE_TOKENS and report.mfu is None
    stamp = json.loads((tmp_path / "run" / rundir.SMOKE_FILE).read_text())
    assert stamp["config_hash"] == rundir.smoke_fingerprint(cfg)
    assert not list_checkpoints(tmp_path / "run") and not (tmp_path / "run" / "smoke").exists()
    # train accepts this stamp, also with another run length; not with another model
    monkeypatch.delenv(rundir.SKIP_SMOKE_ENV, raising=False)
    rundir.check_smoke_stamp(tiny_config(shards, tmp_path / "run", max_iters=999, lr=3e-3))
    with pytest.raises(StateError, match="different config.*make smoke"):
        train_stage.run(tiny_config(shards, tmp_path / "run", n_layer=3))


def test_train_refuses_without_a_stamp_unless_told_to_skip(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(shards, tmp_path / "run", max_iters=2)
    monkeypatch.delenv(rundir.SKIP_SMOKE_ENV, raising=False)
    with pytest.raises(StateError, match=r"smoke.ok not found.*run `make smoke` first"):
        train_stage.run(cfg)
    monkeypatch.setenv(rundir.SKIP_SMOKE_ENV, "1")
    assert train_stage.run(cfg) == 0


class LoudGPT(GPT):
    """A broken initialisation: embeddings 50x too large, so the first loss is far from ln V."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__(cfg)
        with torch.no_grad():
            self.transformer.wte.weight.mul_(50.0)


def test_smoke_fails_with_its_message_on_a_broken_model(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer, "GPT", LoudGPT)
    cfg = tiny_config(shards, tmp_path / "run")
    with pytest.raises(CheckFailed, match=r"first loss \d+\.\d+ is not within smoke_tolerance"):
        smoke.run_smoke(cfg)
    assert not (tmp_path / "run" / rundir.SMOKE_FILE).exists()


def test_smoke_fails_when_the_loss_does_not_fall(shards: Path, tmp_path: Path) -> None:
    cfg = tiny_config(shards, tmp_path / "run", lr=1e-6, min_lr=1e-7)
    with pytest.raises(CheckFailed, match="less than smoke_min_drop=0.5"):
        smoke.run_smoke(cfg)
