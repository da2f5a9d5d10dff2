"""`python -m pipeline smoke`: know within minutes that a training config works.

On the configured shards and model, with the training code itself:
`smoke_steps` optimizer steps at the constant peak `lr`, an eval pass
(`eval_iters` val batches at the training micro-batch) before and after
them, a checkpoint saved and loaded back into a new model that must give the
same loss on a fixed batch, and a few greedily decoded tokens. Checks:

- the initial loss is within `smoke_tolerance` of ln(vocab_size) (a freshly
  initialised GPT predicts close to uniformly). It is the mean, before any
  update, over the fixed val windows (the eval set: one micro-batch swings by
  luck) of the targets that are not their own input token. A fresh model with
  tied embeddings scores a token that repeats its input about 1 nat below
  ln(vocab_size) (its input embedding is its output row), and code repeats up
  to a quarter of its tokens (indentation): on the demo's corpus the plain mean
  sits 0.16-0.27 below ln(vocab_size) and moves with the corpus's share of
  repeats, the rest's mean 0.01-0.05 above it. It is checked before the steps,
  and a failure ends smoke there, in seconds;
- the last loss is at least `smoke_min_drop` below the first;
- every step was finite and the reloaded model's loss matches.

On success `out/<run>/smoke.ok` (model/rundir.py) records a fingerprint of
the config keys that smoke proved (those tagged `smoke` in
model/train_config.py: data, model shape, batch, precision, device);
`make train` refuses to start without a stamp for the same keys. The checkpoint goes to
`out/<run>/smoke/`, which is removed afterwards, so training never resumes
from it.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.autobatch import resolve_config
from model.checkpoint import load_for_inference
from model.errors import CheckFailed
from model.generate import Sampling, generate
from model.lock import exclusive
from model.metrics import peak_mem_gb
from model.rundir import SMOKE_FILE, SmokeStamp, smoke_fingerprint, write_smoke_stamp
from model.runtime import resolve_device
from model.train_config import TrainConfig
from model.trainer import Trainer

log = logging.getLogger(__name__)

CONFIG = TrainConfig
DEFAULT_CONFIG = "configs/gpt2-124m.yaml"
SAMPLE_TOKENS = 8


@dataclass
class SmokeReport:
    losses: list[float]
    val_loss: float
    roundtrip: tuple[float, float]
    ms_per_step: float
    tokens_per_s: float
    mfu: float | None
    peak_mem_gb: float | None
    sample: list[int]
    initial_loss: float  # the eval set's mean loss before any update, over its non-repeats
    initial_all: float  # ... over every target
    failures: list[str] = field(default_factory=list)


def _initial_check(cfg: TrainConfig, initial: float) -> str | None:
    """The failure of the initial-loss check, or None: made before any step, and a failure
    ends smoke there (the steps of a broken initialisation prove nothing)."""
    ln_v = math.log(cfg.vocab_size)
    if abs(initial - ln_v) <= cfg.smoke_tolerance:
        return None
    windows = cfg.eval_iters * int(cfg.micro_batch)
    return (
        f"initial loss {initial:.4f} (mean over {windows} val windows' targets that do not "
        "repeat their input, before any step) "
        f"is not within smoke_tolerance={cfg.smoke_tolerance} of ln(vocab_size="
        f"{cfg.vocab_size}) = {ln_v:.4f}: the initialisation or the data is wrong"
    )


def _checks(cfg: TrainConfig, losses: list[float], roundtrip: tuple[float, float]) -> list[str]:
    out = []
    first, last = losses[0], losses[-1]
    if not all(math.isfinite(v) for v in losses):
        out.append(f"non-finite loss during the steps: {losses}")
    if not first - last >= cfg.smoke_min_drop:
        out.append(
            f"loss fell from {first:.4f} to {last:.4f} in {len(losses)} steps, less than "
            f"smoke_min_drop={cfg.smoke_min_drop}: raise lr or check the data"
        )
    a, b = roundtrip
    if not abs(a - b) <= 1e-4 * max(1.0, abs(a)):
        out.append(f"checkpoint round trip changed the loss on a fixed batch: {a} -> {b}")
    return out


@torch.no_grad()
def _initial_loss(trainer: Trainer) -> tuple[float, float]:
    """The eval set's mean loss over the targets that differ from their input token, and
    over all of them."""
    model, sums = trainer.raw_model, torch.zeros(4, dtype=torch.float64)
    model.eval()
    for i in range(trainer.val_set.iters):
        x, y = trainer.val_set.batch(i)
        with trainer.precision.autocast():
            _, losses = model(x, y, each=True, chunk=trainer.cfg.loss_chunk)  # (B, T)
        other = (y != x).view(-1)
        losses = losses.view(-1).double().cpu()
        sums += torch.stack(
            [losses[other.cpu()].sum(), other.sum().cpu(), losses.sum(), torch.tensor(y.numel())]
        ).double()
    model.train()
    a, n, b, m = sums.tolist()
    return a / max(n, 1.0), b / m


@torch.no_grad()
def _fixed_loss(trainer: Trainer, model: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with trainer.precision.autocast():
        _, loss = model(x, y)
    return float(loss.item())


def _fresh(cfg: TrainConfig) -> tuple[Trainer, TrainConfig, torch.device, Path]:
    """The trainer smoke runs: `cfg`'s fresh model and data, its checkpoints in out/<run>/smoke/."""
    device = resolve_device(cfg)
    resolved = resolve_config(cfg, device)
    work = Path(cfg.out_dir) / "smoke"
    shutil.rmtree(work, ignore_errors=True)
    return Trainer(resolved, device, work), resolved, device, work


def _checked_initial(trainer: Trainer, resolved: TrainConfig, work: Path) -> tuple[float, float]:
    """The initial losses (non-repeats, all), before any update; CheckFailed if out of band."""
    initial, initial_all = _initial_loss(trainer)
    failed = _initial_check(resolved, initial)
    if failed is not None:
        shutil.rmtree(work, ignore_errors=True)
        raise CheckFailed(f"smoke test failed: {failed}")
    return initial, initial_all


def initial_losses(cfg: TrainConfig) -> tuple[float, float]:
    """Smoke's first check alone, as run_smoke makes it before its steps: the fresh model's
    initial losses (non-repeats, all), or CheckFailed. Writes nothing that stays."""
    trainer, resolved, _, work = _fresh(cfg)
    try:
        return _checked_initial(trainer, resolved, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_smoke(cfg: TrainConfig) -> SmokeReport:
    """Run the smoke steps and checks; writes smoke.ok on success, raises CheckFailed if not."""
    trainer, resolved, device, work = _fresh(cfg)
    x, y = (t.clone() for t in trainer.val_set.batch(0))  # the fixed batch
    initial, initial_all = _checked_initial(trainer, resolved, work)  # before any update
    losses: list[float] = []
    times: list[float] = []
    for _ in range(cfg.smoke_steps):
        t0 = time.perf_counter()
        losses.append(trainer.train_step(resolved.lr).loss)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    # the first step pays for compilation and allocator warm-up; leave it out of the rate
    steady = times[1:] or times
    ms = 1000 * sum(steady) / len(steady)
    tps, mfu = trainer.speed(ms)
    val = trainer.evaluate().loss
    trainer.step = cfg.smoke_steps
    path = trainer.save()
    assert path is not None
    before = _fixed_loss(trainer, trainer.raw_model, x, y)
    reloaded, _, _ = load_for_inference(path, map_location=device)
    after = _fixed_loss(trainer, reloaded, x, y)
    greedy, prompt = Sampling(temperature=0), x[0, :16].tolist()
    auto = trainer.precision.autocast
    sample = list(generate(reloaded, prompt, SAMPLE_TOKENS, greedy, stop_token=None, autocast=auto))
    mem = peak_mem_gb(device)  # since resolve_config: the micro_batch trials left out
    report = SmokeReport(
        losses, val, (before, after), ms, tps, mfu, mem, sample, initial, initial_all
    )
    report.failures = _checks(resolved, losses, (before, after))
    shutil.rmtree(work, ignore_errors=True)
    if report.failures:
        raise CheckFailed("smoke test failed: " + "; ".join(report.failures))
    _write_stamp(cfg, report)
    return report


def _write_stamp(cfg: TrainConfig, report: SmokeReport) -> Path:
    stamp = SmokeStamp(
        config_hash=smoke_fingerprint(cfg),
        first_loss=report.losses[0],
        last_loss=report.losses[-1],
        val_loss=report.val_loss,
        ms_per_step=report.ms_per_step,
        tokens_per_s=report.tokens_per_s,
    )
    return write_smoke_stamp(cfg.out_dir, stamp)


def run(cfg: TrainConfig) -> int:
    with exclusive(cfg.out_dir, "smoke"):  # not while a trainer uses the run folder
        r = run_smoke(cfg)
    ln_v = math.log(cfg.vocab_size)
    print(
        f"smoke: initial val loss {r.initial_loss:.4f} over the targets that do not repeat "
        f"their input ({r.initial_all:.4f} over all), ln(vocab_size) {ln_v:.4f}"
    )
    print(f"smoke: loss {r.losses[0]:.4f} -> {r.losses[-1]:.4f} in {len(r.losses)} steps")
    print(f"smoke: val loss {r.val_loss:.4f}; checkpoint round trip {r.roundtrip[0]:.6f} ok")
    rate = f"smoke: {r.ms_per_step:.1f} ms/step, {r.tokens_per_s:,.0f} tokens/s"
    if r.mfu is not None:
        rate += f", MFU {100 * r.mfu:.1f}%"
    if r.peak_mem_gb is not None:
        rate += f", peak memory {r.peak_mem_gb:.2f} GB"
    print(rate)
    print(f"smoke: greedy tokens {r.sample}")
    print(f"smoke: ok -> {cfg.out_dir}/{SMOKE_FILE}")
    return 0
