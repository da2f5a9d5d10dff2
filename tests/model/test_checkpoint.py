"""Checkpoint files: atomic names, pruning, corrupt newest, weights-only loading, RNG."""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model import checkpoint as ck
from model.errors import InputError
from model.trainer import Trainer
from tests.model.train_fixtures import tiny_config, write_tiny_shards


def _state(value: float) -> dict[str, object]:
    return {ck.MODEL: {"w": torch.full((2, 2), value)}, ck.CONFIG: {"keep_ckpts": 2}}


def test_save_names_prunes_and_lists_oldest_first(tmp_path: Path) -> None:
    (tmp_path / ".tmp-ckpt-00000009.pt").write_bytes(b"half")  # a crash mid-save
    for step in (5, 10, 15):
        ck.save_checkpoint(tmp_path, step, _state(step))
    names = [p.name for p in ck.list_checkpoints(tmp_path)]
    assert names == ["ckpt-00000010.pt", "ckpt-00000015.pt"]  # keep_ckpts=2 from the config
    assert not list(tmp_path.glob(".tmp-*"))
    state = torch.load(tmp_path / names[-1], weights_only=True)
    assert state[ck.STEP] == 15 and state[ck.FORMAT] == ck.FORMAT_VERSION


def test_corrupt_newest_is_reported_and_previous_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ck.save_checkpoint(tmp_path, 1, _state(1.0), keep=5)
    newest = ck.save_checkpoint(tmp_path, 2, _state(2.0), keep=5)
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a full disk
    with caplog.at_level(logging.WARNING):
        found = ck.load_latest(tmp_path)
    assert found is not None
    state, path = found
    assert path.name == "ckpt-00000001.pt" and state[ck.STEP] == 1
    assert newest.name in caplog.text


def test_no_checkpoint_is_none_and_all_corrupt_is_an_error(tmp_path: Path) -> None:
    assert ck.load_latest(tmp_path) is None
    (tmp_path / "ckpt-00000003.pt").write_bytes(b"garbage")
    with pytest.raises(InputError, match="none of the 1 checkpoints loads"):
        ck.load_latest(tmp_path)


def test_rng_round_trip_restores_every_stream() -> None:
    state = ck.capture_rng(torch.device("cpu"))
    a = (torch.rand(3), np.random.rand(3), random.random())
    ck.restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_trainer_checkpoint_loads_weights_only_and_for_inference(
    tmp_path: Path, optimizer: str
) -> None:
    cfg = tiny_config(write_tiny_shards(tmp_path / "shards"), tmp_path / "run", optimizer=optimizer)
    trainer = Trainer(cfg, torch.device("cpu"), tmp_path / "run")
    trainer.train_step(cfg.lr)
    trainer.step = 1
    path = trainer.save()
    assert path is not None
    raw = torch.load(path, weights_only=True)  # plain data only
    assert set(raw) >= {
        ck.MODEL,
        ck.OPTIMIZER,
        ck.SCALER,
        ck.STEP,
        ck.RNG,
        ck.LOADER,
        ck.LOSS_WINDOW,
        ck.CONFIG,
    }
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in raw[ck.MODEL])
    assert (
        raw[ck.CONFIG]["n_embd"] == 32 and raw[ck.LOADER][0]["served"] == cfg.grad_accum * 4
    )  # 2 micro-batches of 4 windows
    estimate = trainer.estimated_checkpoint_bytes()  # what it assumes before the first one
    assert path.stat().st_size <= estimate <= 1.15 * path.stat().st_size  # never under
    model, cfg2, step = ck.load_for_inference(tmp_path / "run")
    # the config as the run resolved it: tokenizer auto -> the shards' (their manifest's)
    assert step == 1 and cfg2 == replace(cfg, tokenizer="counting") and not model.training
    for name, p in trainer.raw_model.state_dict().items():
        assert torch.equal(p, model.state_dict()[name]), name
