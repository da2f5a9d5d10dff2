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
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from model import config as configlib
from model import distributed, optim
from model.checkpoint import (
    CONFIG,
    LOADER,
    LOSS_WINDOW,
    MODEL,
    OPTIMIZER,
    RNG,
    SCALER,
    STEP,
    capture_rng,
    check_space,
    estimate_bytes,
    list_checkpoints,
    load_latest,
    restore_rng,
    save_checkpoint,
    step_of,
)
from model.distributed import DistInfo
from model.errors import CheckFailed, StateError
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
from model.scoring import token_losses
from model.signals import StopFlag
from model.train_config import TrainConfig

log = logging.getLogger(__name__)

# A checkpoint of a different shape cannot be resumed into this model: the keys
# tagged `model` in model/train_config.py.
SHAPE_KEYS = configlib.keys(TrainConfig, "model")


@dataclass
class StepResult:
    loss: float  # mean over the step's micro-batches (and ranks)
    grad_norm: float  # before clipping
    ok: bool  # False: non-finite, the update was skipped


@dataclass
class EvalResult:
    loss: float  # nats per target token over the whole val set
    by_language: dict[str, float]  # the same per language (top ones, then `other`)


class Trainer:
    """Model, optimizer, loaders and the run folder of one training run (one rank)."""

    def __init__(
        self, cfg: TrainConfig, device: torch.device, run_dir: Path, info: DistInfo | None = None
    ) -> None:
        assert isinstance(cfg.micro_batch, int), "resolve micro_batch first (resolve_config)"
        self.cfg, self.device, self.run_dir = cfg, device, Path(run_dir)
        self.info = info or DistInfo()
        self.accum = distributed.per_rank_accum(cfg.grad_accum, self.info.world_size)
        self.precision = resolve_precision(cfg, device)
        enable_fast_math(device)
        seed_everything(cfg.seed)  # the same initial weights on every rank
        self.raw_model = GPT(GPTConfig.from_train(cfg)).to(device)
        self.optimizer = self.raw_model.configure_optimizer(
            cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), device.type, cfg.optimizer
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision.uses_scaler)
        self.compiled: Any = maybe_compile(self.raw_model, cfg, device)
        self.model: Any = self.compiled
        if self.info.enabled:
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
        """DDP all-reduces gradients only on the last micro-step of an accumulation."""
        if self.info.enabled and micro < self.accum - 1:
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
        norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm)
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
                losses = token_losses(self.raw_model, x, y, chunk)  # (B, T)
            slots = torch.from_numpy(langs.of(self.val_set.positions(i))).to(self.device)
            sums[0].index_add_(0, slots.view(-1), losses.view(-1).double())
            sums[1].index_add_(0, slots.view(-1), torch.ones_like(losses).view(-1).double())
        if self.info.enabled:
            torch.distributed.all_reduce(sums)
        self.compiled.train()
        nats, tokens = sums.tolist()
        by_language = {n: a / t for n, a, t in zip(langs.names, nats, tokens, strict=True) if t}
        return EvalResult(sum(nats) / sum(tokens), by_language)

    # --- checkpoints --------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The checkpoint dict (a collective under DDP: every rank must call it)."""
        return {
            MODEL: self.raw_model.state_dict(),
            OPTIMIZER: self.optimizer.state_dict(),
            SCALER: self.scaler.state_dict(),
            STEP: self.step,
            RNG: distributed.gather(capture_rng(self.device), self.info),
            LOADER: distributed.gather(self.train_loader.state_dict(), self.info),
            LOSS_WINDOW: self.window.state_dict(),
            CONFIG: dataclasses.asdict(self.cfg),
        }

    def checkpoint_bytes(self) -> int:
        """What one more checkpoint takes: the newest one's size, else the estimate."""
        ckpts = list_checkpoints(self.run_dir)
        if ckpts:
            return ckpts[-1].stat().st_size
        return self.estimated_checkpoint_bytes()

    def estimated_checkpoint_bytes(self) -> int:
        """A checkpoint's size from the model and optimizer alone (never under, tested)."""
        n_tensors = len(list(self.raw_model.parameters()))
        muon = list(optim.muon_params(self.raw_model)) if self.cfg.optimizer == "muon" else []
        state = optim.state_bytes(
            self.raw_model.num_params(), n_tensors, sum(p.numel() for p in muon), len(muon)
        )
        return estimate_bytes(self.raw_model.num_params(), n_tensors, state)

    def save(self) -> Path | None:
        state = self.state()
        path = None
        if self.info.is_main:
            check_space(self.run_dir, self.step, self.checkpoint_bytes())
            path = save_checkpoint(self.run_dir, self.step, state)
        distributed.barrier(self.info)
        if path is not None:
            log.info("checkpoint %s", path)
        return path

    def resume(self) -> bool:
        """Load the newest checkpoint that loads; False when the run starts fresh."""
        found = load_latest(self.run_dir, map_location=self.device)
        if found is None:
            return False
        state, path = found
        saved = state[CONFIG]
        changed = [k for k in SHAPE_KEYS if saved.get(k) != getattr(self.cfg, k)]
        if changed:
            diffs = ", ".join(f"{k} {saved.get(k)} -> {getattr(self.cfg, k)}" for k in changed)
            raise StateError(
                f"{path} has a different model shape ({diffs}); use another out_dir "
                "or move the old checkpoints away"
            )
        was = saved.get("optimizer", "adamw")
        if was != self.cfg.optimizer:
            raise StateError(
                f"{path} was trained with optimizer={was}, this run asks for "
                f"optimizer={self.cfg.optimizer}; keep optimizer={was}, or use another out_dir"
            )
        self.raw_model.load_state_dict(state[MODEL])
        self.optimizer.load_state_dict(state[OPTIMIZER])
        if self.scaler.is_enabled() and state[SCALER]:
            self.scaler.load_state_dict(state[SCALER])
        self.step = int(state[STEP])
        self.window.load_state_dict(state.get(LOSS_WINDOW))
        self._restore_rank_state(state)
        if self.info.is_main:
            self._set_aside_newer(self.step)
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def _restore_rank_state(self, state: dict[str, Any]) -> None:
        rngs, loaders = state[RNG], state[LOADER]
        rank = self.info.rank
        if len(loaders) == self.info.world_size:
            self.train_loader.load_state_dict(loaders[rank])
            restore_rng(rngs[rank], self.device)
        else:
            log.warning(
                "checkpoint was written by %d processes, this run has %d: the data order "
                "is the same, but the random streams (dropout) differ from an uninterrupted run",
                len(loaders),
                self.info.world_size,
            )
            self.train_loader.load_state_dict(loaders[0])
            seed_everything(self.cfg.seed + self.step + rank)

    def _set_aside_newer(self, step: int) -> None:
        """Rename checkpoints newer than the one resumed (they did not load) to *.corrupt."""
        for p in list_checkpoints(self.run_dir):
            if step_of(p) > step:
                p.rename(p.with_name(p.name + ".corrupt"))
                log.warning("set aside %s (did not load) as %s.corrupt", p, p.name)

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
