"""The smoke stage: passes on a sane tiny run, fails with its numbers on a broken model."""

from __future__ import annotations

import json
import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from model import rundir, tokenizer, trainer
from model.checkpoint import list_checkpoints
from model.errors import CheckFailed, StateError
from model.gpt import GPT, GPTConfig
from model.shards import write_shard
from pipeline import smoke
from pipeline import train as train_stage
from pipeline.tokenize import manifest
from tests.model.train_fixtures import gpt2_tokenizer_info, tiny_config


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
    initial = r"initial loss \d+\.\d+ \(mean over 8 val windows, before any step\) is not within"
    with pytest.raises(CheckFailed, match=initial + " smoke_tolerance"):
        smoke.run_smoke(cfg)
    assert not (tmp_path / "run" / rundir.SMOKE_FILE).exists()


def test_smoke_fails_when_the_loss_does_not_fall(shards: Path, tmp_path: Path) -> None:
    cfg = tiny_config(shards, tmp_path / "run", lr=1e-6, min_lr=1e-7)
    with pytest.raises(CheckFailed, match="less than smoke_min_drop=0.5"):
        smoke.run_smoke(cfg)


def write_banner_first_shards(folder: Path) -> Path:
    """GPT-2 shards of real code (this Python's standard library) whose train stream opens
    with a comment banner, one token repeated: the first micro-batch of a stream that a
    fresh model with tied embeddings scores far below ln(vocab) (its input is its target)."""
    ids: list[int] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        ids += [*tokenizer.encode(path.read_text(encoding="utf-8", errors="replace")[:3000])]
        ids.append(tokenizer.EOT)
        if len(ids) >= 48_000:
            break
    banner = tokenizer.encode("#" * 32 * 132)  # 132 tokens of 32 '#': one micro-batch of 4x33
    assert len(set(banner)) == 1 and len(banner) == 132
    write_shard(folder, "train", 0, np.array(banner + ids[:40_000], dtype=np.uint16))
    write_shard(folder, "val", 0, np.array(ids[40_000:48_000], dtype=np.uint16))
    manifest.write_for_shards(folder, gpt2_tokenizer_info())
    return folder


def test_the_initial_loss_is_checked_on_the_val_windows_not_the_first_batch(
    tmp_path: Path,
) -> None:
    """A sound model passes though its first micro-batch alone lies outside the band."""
    data = write_banner_first_shards(tmp_path / "shards")
    cfg = tiny_config(
        data,
        tmp_path / "run",
        vocab_size=50304,
        n_embd=64,
        shuffle=False,
        grad_accum=1,
        eval_iters=4,
    )
    report = smoke.run_smoke(cfg)
    ln_v = math.log(cfg.vocab_size)
    assert abs(report.losses[0] - ln_v) > cfg.smoke_tolerance + 0.1  # the banner batch: ~10.27
    assert abs(report.initial_loss - ln_v) < cfg.smoke_tolerance - 0.1  # real code: ~10.63
    assert (tmp_path / "run" / rundir.SMOKE_FILE).is_file()
