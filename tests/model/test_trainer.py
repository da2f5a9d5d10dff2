"""The training loop: LR schedule, metrics, eval, loss guard, stop on a signal."""

from __future__ import annotations

import itertools
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from model.checkpoint import MODEL, list_checkpoints, load_latest
from model.distributed import DistInfo
from model.errors import CheckFailed, StateError
from model.metrics import read_metrics
from model.schedule import lr_at
from model.trainer import StepResult, Trainer
from pipeline.train import train
from tests.model.train_fixtures import tiny_config

CPU = torch.device("cpu")


def test_lr_schedule_warmup_peak_and_end(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, tmp_path, lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    assert lr_at(0, cfg) == pytest.approx(1e-4)  # lr / warmup: the first step moves
    assert lr_at(4, cfg) == pytest.approx(5e-4)
    assert lr_at(10, cfg) == pytest.approx(1e-3)  # the peak
    assert lr_at(60, cfg) == pytest.approx(5.5e-4)  # halfway down the cosine
    assert lr_at(110, cfg) == pytest.approx(1e-4)  # min_lr at max_iters and after
    assert lr_at(500, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_train_logs_metrics_evals_and_checkpoints(shards: Path, tmp_path: Path) -> None:
    cfg = tiny_config(shards, tmp_path / "run", max_iters=20, keep_ckpts=1)
    assert train(cfg) == 0
    recs = read_metrics(tmp_path / "run")
    steps = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in steps] == [5, 10, 15, 20]
    assert [r["step"] for r in evals] == [0, 10, 20]
    assert set(steps[0]) >= {"step", "loss", "lr", "tokens", "ms", "tokens_per_s"}
    assert "mfu" not in steps[0]  # no invented MFU on the CPU
    assert steps[-1]["tokens"] == 20 * cfg.tokens_per_step
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5  # it learns
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["ckpt-00000020.pt"]
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_mfu_is_per_gpu_and_tokens_per_s_the_whole_jobs(shards: Path, tmp_path: Path) -> None:
    """Under DDP a step's tokens are every rank's while the peak is one GPU's: two GPUs
    making the job's tokens at the same rate are each half as busy as one."""
    cfg = tiny_config(shards, tmp_path)
    trainer = Trainer(cfg, CPU, tmp_path)
    ms = 50.0
    tps = cfg.tokens_per_step * 1000.0 / ms
    # the peak a GPU would have, set to make one GPU 50 % busy (the CPU has none: no MFU)
    trainer.mfu.peak = tps * trainer.mfu.flops_per_token / 1e12 / 0.5
    assert trainer.speed(ms) == (tps, pytest.approx(0.5))
    trainer.info = DistInfo(rank=0, local_rank=0, world_size=2)  # what torchrun's rank 0 has
    assert trainer.speed(ms) == (tps, pytest.approx(0.25))
    trainer.step = 5
    trainer._log_step(StepResult(loss=3.0, grad_norm=1.0, ok=True), ms)
    (rec,) = read_metrics(tmp_path)
    assert (rec["tokens_per_s"], rec["mfu"]) == (round(tps, 1), 0.25)


def test_logged_train_loss_is_the_mean_of_its_interval(shards: Path, tmp_path: Path) -> None:
    cfg = tiny_config(shards, tmp_path, max_iters=12, log_interval=4, eval_interval=100)
    trainer = Trainer(cfg, CPU, tmp_path)
    step = trainer.train_step
    losses: list[float] = []

    def recording(lr: float) -> StepResult:
        r = step(lr)
        losses.append(r.loss)
        return r

    trainer.train_step = recording  # type: ignore[method-assign]
    assert trainer.fit() == 0
    logged = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in logged] == [4, 8, 12]
    for i, rec in enumerate(logged):
        window = losses[4 * i : 4 * i + 4]
        assert rec["loss"] == pytest.approx(sum(window) / 4, rel=1e-12)
        assert rec["loss_step"] == window[-1]


def test_eval_reads_the_same_batches_every_time(shards: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(shards, tmp_path), CPU, tmp_path)
    assert trainer.evaluate() == trainer.evaluate()


def test_the_plain_loss_evaluates_on_all_logits_at_once_and_agrees(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """loss=plain is the nanoGPT comparison: its eval makes the full (B*T, V) logits, as
    the planner counts for it; the value is the chunked losses' value."""
    import model.gpt as gpt  # GPT.forward(each=True), the trainer's eval, calls it

    chunks: list[int] = []
    real = gpt.position_losses

    def recording(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, chunk: int = 0) -> Any:
        chunks.append(chunk)
        return real(h, w, y, chunk)

    monkeypatch.setattr(gpt, "position_losses", recording)
    fused = Trainer(tiny_config(shards, tmp_path / "f", loss="fused", loss_chunk=7), CPU, tmp_path)
    plain = Trainer(tiny_config(shards, tmp_path / "p", loss="plain"), CPU, tmp_path)
    plain.raw_model.load_state_dict(fused.raw_model.state_dict())
    a, b = fused.evaluate(), plain.evaluate()
    n = plain.cfg.micro_batch * plain.cfg.block_size
    assert set(chunks) == {7, n}
    assert abs(a.loss - b.loss) < 1e-5


def _poison(trainer: Trainer, bad_calls: set[int]) -> None:
    """Make the forward pass return a NaN loss on the given call numbers."""
    forward = trainer.raw_model.forward
    calls = {"n": 0}

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        logits, loss = forward(*args, **kwargs)
        calls["n"] += 1
        if loss is not None and calls["n"] in bad_calls:
            loss = loss * float("nan")
        return logits, loss

    trainer.raw_model.forward = poisoned  # type: ignore[method-assign]


def test_one_non_finite_step_is_skipped_and_counted(shards: Path, tmp_path: Path) -> None:
    cfg = tiny_config(shards, tmp_path, max_iters=10, grad_accum=1)
    trainer = Trainer(cfg, CPU, tmp_path)
    _poison(trainer, {3})
    assert trainer.fit() == 0
    assert trainer.bad_total == 1
    last = [r for r in read_metrics(tmp_path) if "loss" in r][-1]
    assert last["bad_steps"] == 1 and math.isfinite(last["loss"])
    assert all(torch.isfinite(p).all() for p in trainer.raw_model.parameters())


def test_bad_steps_in_a_row_stop_with_the_good_checkpoint_intact(
    shards: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(shards, tmp_path, max_iters=20, grad_accum=1, ckpt_interval=4)
    cfg.max_bad_steps = 3
    trainer = Trainer(cfg, CPU, tmp_path)
    _poison(trainer, set(range(6, 100)))  # every step from step 6 on
    with pytest.raises(CheckFailed, match=r"3 steps in a row .*max_bad_steps=3.*ckpt-00000004"):
        trainer.fit()
    found = load_latest(tmp_path)
    assert found is not None and found[0]["step"] == 4
    assert all(torch.isfinite(t).all() for t in found[0][MODEL].values())


def test_sigterm_checkpoints_at_the_step_boundary_and_stops(shards: Path, tmp_path: Path) -> None:
    cfg = tiny_config(shards, tmp_path, max_iters=50, ckpt_interval=1000)
    trainer = Trainer(cfg, CPU, tmp_path)
    step = trainer.train_step

    def step_then_signal(lr: float) -> StepResult:
        if trainer.step == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step, as `docker stop` would
        return step(lr)

    trainer.train_step = step_then_signal  # type: ignore[method-assign]
    assert trainer.fit() == 128 + signal.SIGTERM
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000007.pt"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_resume_refuses_a_checkpoint_of_another_shape(shards: Path, tmp_path: Path) -> None:
    assert train(tiny_config(shards, tmp_path, max_iters=10)) == 0
    with pytest.raises(StateError, match="n_embd 32 -> 64"):
        Trainer(tiny_config(shards, tmp_path, n_embd=64), CPU, tmp_path).resume()


def test_a_steps_loss_and_gradient_are_the_mean_over_its_micro_batches(
    shards: Path, tmp_path: Path
) -> None:
    """The step's loss is the mean of its micro-batches' losses, computed here by hand on
    the same batches with a copy of the weights, and so is its gradient (its norm before
    clipping): a step that kept only the last micro-batch's loss (times the accumulation)
    once left every trainer and resume test green."""
    import copy

    cfg = tiny_config(shards, tmp_path / "run", grad_accum=4, grad_clip=0.0)
    trainer = Trainer(cfg, torch.device("cpu"), tmp_path / "run")
    before = copy.deepcopy(trainer.raw_model)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_next = trainer.train_loader.next_batch

    def recording() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = real_next()
        seen.append((x.clone(), y.clone()))
        return x, y

    trainer.train_loader.next_batch = recording  # type: ignore[method-assign]
    result = trainer.train_step(1e-3)
    assert len(seen) == 4
    losses = []
    for x, y in seen:
        _, loss = before(x, y)
        assert loss is not None
        (loss / 4).backward()
        losses.append(float(loss))
    assert len(set(losses)) == 4  # four different micro-batches, or the test proves nothing
    assert result.loss == pytest.approx(sum(losses) / 4, rel=1e-6)
    norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in before.parameters() if p.grad is not None])
    )
    assert result.grad_norm == pytest.approx(float(norm), rel=1e-5)
