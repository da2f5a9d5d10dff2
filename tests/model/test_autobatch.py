"""`micro_batch: auto` (model/autobatch.py): the CPU rule, world sizes, the run's config.yaml."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml

from model.autobatch import resolve_config, resolve_micro_batch
from model.errors import ConfigError
from pipeline.train import train
from tests.model.train_fixtures import tiny_config

CPU = torch.device("cpu")


def test_cpu_says_it_does_nothing_and_gives_a_valid_config(
    shards: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_config(shards, tmp_path, micro_batch="auto", batch_size=32)
    with caplog.at_level(logging.INFO, logger="model.autobatch"):
        out = resolve_micro_batch(cfg, CPU)
    assert (out.micro_batch, out.grad_accum) == (8, 4)  # the largest divisor of 32 up to 8
    assert out.micro_batch * out.grad_accum == cfg.batch_size
    assert "does nothing on cpu" in caplog.text and "micro_batch 8" in caplog.text
    assert cfg.micro_batch == "auto"  # a copy, the input is untouched


@pytest.mark.parametrize(
    ("batch_size", "world", "expected"),
    [(12, 1, (6, 2)), (5, 1, (5, 1)), (24, 4, (6, 4)), (32, 8, (4, 8)), (64, 1, (8, 8))],
)
def test_cpu_rule_keeps_grad_accum_divisible_by_world_size(
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    batch_size: int,
    world: int,
    expected: tuple[int, int],
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world))
    cfg = tiny_config(shards, tmp_path, micro_batch="auto", batch_size=batch_size)
    out = resolve_micro_batch(cfg, CPU)
    assert (out.micro_batch, out.grad_accum) == expected
    assert out.grad_accum % world == 0


def test_batch_size_that_cannot_be_split_over_the_ranks_is_a_config_error(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    cfg = tiny_config(shards, tmp_path, micro_batch="auto", batch_size=6)
    with pytest.raises(ConfigError, match="batch_size=6"):
        resolve_config(cfg, CPU)


def test_resolved_size_goes_into_the_run_config(shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(shards, run, micro_batch="auto", batch_size=6, max_iters=2, eval_iters=1)
    assert train(cfg) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert (saved["micro_batch"], saved["grad_accum"], saved["batch_size"]) == (6, 1, 6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_trial_confirms_a_fitting_size(shards: Path, tmp_path: Path) -> None:
    cfg = tiny_config(shards, tmp_path, micro_batch="auto", batch_size=16, device="cuda")
    out = resolve_micro_batch(cfg, torch.device("cuda"))
    assert out.micro_batch == 16 and out.grad_accum == 1  # a tiny model fits any GPU
