"""The training loop: `python -m pipeline train` (and, piece by piece, the smoke stage).

One optimizer step = `grad_accum / world_size` micro-batches per rank, each
(micro_batch, block_size) tokens, under autocast; gradients are unscaled
(fp16), clipped to `grad_clip`, and AdamW steps at `lr_at(step)`. Every step
is checked: a non-finite loss or gradient norm skips the update (the loss
guard); `max_bad_steps` in a row stop the run. Evals, metrics and checkpoints
happen at step boundaries, and so does a stop asked for by SIGTERM/SIGINT.

A rerun resumes from the newest checkpoint that loads: weights, optimizer,
GradScaler, step, RNG states and loader positions, so that on the CPU with a
fixed seed a killed-and-resumed run ends bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from model import distributed, fsdp, optim
from model.checkpoint import list_checkpoints
from model.dataset import resolve_tokenizer
from model.distributed import DistInfo
from model.errors import CheckFailed
from model.gpt import GPT, GPTConfig
from model.loader import make_loaders
from model.metrics import LossWindow, MetricsLog, MfuMeter, peak_mem_gb, progress_line
from model.runtime import (
    enable_fast_math,
    maybe_compile,
    resolve_precision,
    seed_everything,
)
from model.schedule import lr_at
from model.signals import StopFlag
from model.train_config import TrainConfig
from model.trainer_state import SHAPE_KEYS, Checkpoints

log = logging.getLogger(__name__)

__all__ = ["SHAPE_KEYS", "EvalResult", "StepResult", "Trainer"]


@dataclass
class StepResult:
    loss: float  # mean over the step's micro-batches (and ranks)
    grad_norm: float  # before clipping
    ok: bool  # False: non-finite, the update was skipped


@dataclass
class EvalResult:
    loss: float  # nats per target token over the whole val set
    by_language: dict[str, float]  # the same per language (top ones, then `other`)


class Trainer(Checkpoints):
    """Model, optimizer, loaders and the run folder of one training run (one rank)."""

    def __init__(
        self, cfg: TrainConfig, device: torch.device, run_dir: Path, info: DistInfo | None = None
    ) -> None:
        assert isinstance(cfg.micro_batch, int), "resolve micro_batch first (resolve_config)"
        cfg = resolve_tokenizer(cfg)  # (resolve_config did it already; a Trainer made alone)
        self.cfg, self.device, self.run_dir = cfg, device, Path(run_dir)
        self.info = info or DistInfo()
        self.accum = distributed.per_rank_accum(cfg.grad_accum, self.info.world_size)
        self.precision = resolve_precision(cfg, device)
        enable_fast_math(device)
        seed_everything(cfg.seed)  # the same initial weights on every rank
        self.raw_model = GPT(GPTConfig.from_train(cfg)).to(device)
        self.sharded = cfg.parallel == "fsdp"
        if self.sharded:  # in place: the weights become shards (DTensors) before AdamW sees them
            compile_blocks = cfg.compile and device.type == "cuda"
            blocks = self.raw_model.transformer.h
            fsdp.shard(self.raw_model, blocks, self.info, device, self.precision, compile_blocks)
        self.optimizer = self.raw_model.configure_optimizer(
            cfg.weight_decay,
            cfg.lr,
            (cfg.beta1, cfg.beta2),
            device.type,
            cfg.optimizer,
            self.sharded,
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision.uses_scaler)
        self.compiled: Any = self.raw_model
        if not self.sharded:
            self.compiled = maybe_compile(self.raw_model, cfg, device)
        self.model: Any = self.compiled
        if self.info.enabled and not self.sharded:
            ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(self.compiled, device_ids=ids)
        seed_everything(cfg.seed + self.info.rank)  # dropout masks differ between ranks
        self.train_loader, self.val_set = make_loaders(
            cfg, self.info.rank, self.info.world_size, device
        )
        self.step = 0
        self.window = LossWindow()  # the train losses since the last metrics line
        self.bad_streak = 0
        self.bad_total = 0
        self.metrics = MetricsLog(self.run_dir, tensorboard=cfg.tensorboard)
        self.mfu = MfuMeter(
            device,
            self.precision.name,
            self.raw_model.num_params(non_embedding=True),
            cfg.n_layer,
            cfg.n_embd,
            cfg.block_size,
            cfg.peak_tflops,
        )

    # --- one optimizer step -------------------------------------------------

    def _sync_context(self, micro: int) -> contextlib.AbstractContextManager[Any]:
        """DDP all-reduces gradients only on the last micro-step of an accumulation (FSDP
        reduce-scatters at each: its gradients stay shards)."""
        if isinstance(self.model, DistributedDataParallel) and micro < self.accum - 1:
            ctx: contextlib.AbstractContextManager[Any] = self.model.no_sync()
            return ctx
        return contextlib.nullcontext()

    def train_step(self, lr: float) -> StepResult:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accum):
            x, y = self.train_loader.next_batch()  # (B, T) each
            with self._sync_context(micro), self.precision.autocast():
                _, loss = self.model(x, y)
                loss = loss / self.accum  # the mean over the step's micro-batches
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if self.info.enabled:  # the logged loss is the mean over ranks
            torch.distributed.all_reduce(loss_sum)
            loss_sum /= self.info.world_size
        for opt in optim.parts(self.optimizer):  # the GradScaler's way for several
            self.scaler.unscale_(opt)  # no-op without fp16
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        norm = fsdp.whole(torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm))
        loss_v, norm_v = (float(v) for v in torch.stack([loss_sum, norm.float()]).tolist())
        # With fp16 an inf gradient is the GradScaler's business (it skips and lowers
        # the scale); a non-finite loss is a real problem in every precision.
        ok = math.isfinite(loss_v) and (math.isfinite(norm_v) or self.scaler.is_enabled())
        if self.scaler.is_enabled():
            if ok:
                for opt in optim.parts(self.optimizer):
                    self.scaler.step(opt)
            self.scaler.update()
        elif ok:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss=loss_v, grad_norm=norm_v, ok=ok)

    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        """The mean loss over the fixed val windows (model/loader.py's EvalSet, the same
        every time), overall and per language of the val document index."""
        self.compiled.eval()
        langs = self.val_set.languages
        sums = torch.zeros(2, len(langs.names), dtype=torch.float64, device=self.device)
        for i in range(self.val_set.iters):
            x, y = self.val_set.batch(i)
            # the plain loss evaluates as nanoGPT does, on all the logits at once (what the
            # planner counts for it, model/memory.py); the others a chunk at a time
            chunk = x.numel() if self.cfg.loss == "plain" else self.cfg.loss_chunk
            with self.precision.autocast():
                _, losses = self.raw_model(x, y, each=True, chunk=chunk)  # (B, T)
            slots = torch.from_numpy(langs.of(self.val_set.positions(i))).to(self.device)
            sums[0].index_add_(0, slots.view(-1), losses.view(-1).double())
            sums[1].index_add_(0, slots.view(-1), torch.ones_like(losses).view(-1).double())
        if self.info.enabled:
            torch.distributed.all_reduce(sums)
        self.compiled.train()
        nats, tokens = sums.tolist()
        by_language = {n: a / t for n, a, t in zip(langs.names, nats, tokens, strict=True) if t}
        return EvalResult(sum(nats) / sum(tokens), by_language)

    # --- the loop -------------------------------------------------------------

    def fit(self) -> int:
        """Train up to `max_iters`; 0 when done, 128 + signal number when stopped by one."""
        cfg = self.cfg
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # A fresh run starts an empty file; a resumed one drops what came after its step.
            self.metrics.truncate_after(self.step if self.step > 0 else -1)
        if self.step == 0:
            self._eval_and_log()
        window_start, window_steps = time.perf_counter(), 0
        with StopFlag() as stop:
            while self.step < cfg.max_iters:
                result = self.train_step(lr_at(self.step, cfg))
                self.step += 1
                window_steps += 1
                self._guard(result)
                self.window.add(result.loss, result.ok)
                last = self.step == cfg.max_iters
                if self.step % cfg.log_interval == 0 or last:
                    ms = 1000 * (time.perf_counter() - window_start) / window_steps
                    self._log_step(result, ms)
                    window_start, window_steps = time.perf_counter(), 0
                if self.step % cfg.eval_interval == 0 or last:
                    self._eval_and_log()
                stopping = distributed.any_rank(stop.requested, self.info, self.device)
                if self.step % cfg.ckpt_interval == 0 or last or stopping:
                    self.save()
                if stopping:
                    log.warning("stopped at step %d; rerun the same command to resume", self.step)
                    return 128 + (stop.signum or 15)
        log.info("done: %d steps, %d skipped by the loss guard", self.step, self.bad_total)
        return 0

    def _guard(self, r: StepResult) -> None:
        if r.ok:
            self.bad_streak = 0
            return
        self.bad_streak += 1
        self.bad_total += 1
        log.warning(
            "step %d skipped: loss %s, grad norm %s (%d in a row, %d in all)",
            self.step,
            r.loss,
            r.grad_norm,
            self.bad_streak,
            self.bad_total,
        )
        if self.bad_streak >= self.cfg.max_bad_steps:
            ckpts = list_checkpoints(self.run_dir)
            last = str(ckpts[-1]) if ckpts else "none yet"
            raise CheckFailed(
                f"{self.bad_streak} steps in a row with a non-finite loss or gradient "
                f"(max_bad_steps={self.cfg.max_bad_steps}) at step {self.step}; last good "
                f"checkpoint: {last}. Lower lr or check the data, then rerun to resume"
            )

    def speed(self, ms: float) -> tuple[float, float | None]:
        """(tokens/s of the whole job, MFU of one GPU) at `ms` per optimizer step: under DDP
        a step's tokens are every rank's, and the peak MFU divides by is one GPU's."""
        tps = self.cfg.tokens_per_step * 1000.0 / ms if ms > 0 else 0.0
        return tps, self.mfu(tps, gpus=self.info.world_size)

    def _log_step(self, r: StepResult, ms: float) -> None:
        if not self.info.is_main:
            return
        tokens = self.step * self.cfg.tokens_per_step
        tps, mfu = self.speed(ms)
        rec: dict[str, Any] = {
            "step": self.step,
            "loss": self.window.mean(r.loss),  # the mean over the steps since the last line
            "loss_step": r.loss,  # this step's alone
            "grad_norm": round(r.grad_norm, 5),  # before clipping
            "lr": lr_at(self.step - 1, self.cfg),
            "tokens": tokens,
            "ms": round(ms, 3),
            "tokens_per_s": round(tps, 1),
        }
        if mfu is not None:
            rec["mfu"] = round(mfu, 4)
        mem = peak_mem_gb(self.device)
        if mem is not None:
            rec["peak_mem_gb"] = round(mem, 3)
        if self.bad_total:
            rec["bad_steps"] = self.bad_total
        self.metrics.append(rec)
        log.info(progress_line(rec, self.cfg.max_iters))

    def _eval_and_log(self) -> None:
        val = self.evaluate()
        if self.info.is_main:
            tokens = self.step * self.cfg.tokens_per_step
            rec: dict[str, Any] = {"step": self.step, "val_loss": val.loss, "tokens": tokens}
            if len(val.by_language) > 1:  # with one language it is val_loss again
                rec["val_by_language"] = {k: round(v, 5) for k, v in val.by_language.items()}
            self.metrics.append(rec)
            shown = ", ".join(f"{k} {v:.3f}" for k, v in list(val.by_language.items())[:4])
            log.info(
                "step %d | val loss %.4f%s",
                self.step,
                val.loss,
                f" ({shown})" if shown and len(val.by_language) > 1 else "",
            )
