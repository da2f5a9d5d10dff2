"""A training run's checkpoints: what a Trainer saves, and how it resumes.

`Checkpoints` is the Trainer's half that talks to model/checkpoint.py (one
`ckpt-<step>.pt` file per step, rank 0 writes it) and, under `parallel: fsdp`,
to model/checkpoint_dcp.py (a DCP folder, every rank writes its shards). A
rerun resumes the newest checkpoint that loads: weights, optimizer, GradScaler,
step, RNG states and loader positions, bitwise on the CPU.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from model import checkpoint_dcp, distributed, optim, tokenizer
from model import config as configlib
from model.checkpoint import (
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    LOADER,
    LOSS_WINDOW,
    MODEL,
    OPTIMIZER,
    RNG,
    SCALER,
    STEP,
    capture_rng,
    check_format,
    check_space,
    checkpoint_size,
    disk_full,
    estimate_bytes,
    list_checkpoints,
    load_latest,
    prune,
    restore_rng,
    save_checkpoint,
    step_of,
)
from model.dataset import mixed
from model.distributed import DistInfo
from model.errors import StateError
from model.gpt import GPT
from model.loader import TrainLoader
from model.manifest import MANIFEST
from model.metrics import LossWindow
from model.optim import Optimizers
from model.runtime import seed_everything
from model.train_config import TrainConfig

log = logging.getLogger(__name__)

# A checkpoint of a different shape cannot be resumed into this model: the keys
# tagged `model` in model/train_config.py.
SHAPE_KEYS = configlib.keys(TrainConfig, "model")


class Checkpoints:
    """Saving and resuming, for model/trainer.py's Trainer (which sets these)."""

    cfg: TrainConfig
    device: torch.device
    run_dir: Path
    info: DistInfo
    raw_model: GPT
    optimizer: torch.optim.Optimizer | Optimizers
    scaler: torch.amp.GradScaler
    sharded: bool
    train_loader: TrainLoader
    window: LossWindow
    step: int

    def state(self) -> dict[str, Any]:
        """The checkpoint dict (a collective under DDP: every rank must call it); under FSDP
        without the weights and the optimizer's state, which go to DCP's shards."""
        state: dict[str, Any] = {}
        if not self.sharded:
            state[MODEL] = self.raw_model.state_dict()
            state[OPTIMIZER] = self.optimizer.state_dict()
        state.update(
            {
                SCALER: self.scaler.state_dict(),
                STEP: self.step,
                RNG: distributed.gather(capture_rng(self.device), self.info),
                LOADER: distributed.gather(self.train_loader.state_dict(), self.info),
                LOSS_WINDOW: self.window.state_dict(),
                CONFIG: dataclasses.asdict(self.cfg),
            }
        )
        return state

    def checkpoint_bytes(self) -> int:
        """What one more checkpoint takes: the newest one's size, else the estimate."""
        ckpts = list_checkpoints(self.run_dir)
        if ckpts:
            return checkpoint_size(ckpts[-1])
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
        if self.sharded:
            path = self._save_shards(state)
        elif self.info.is_main:
            path = save_checkpoint(self.run_dir, self.step, state)
        distributed.barrier(self.info)
        if path is not None:
            log.info("checkpoint %s", path)
        return path

    def _save_shards(self, state: dict[str, Any]) -> Path:
        rest = {**state, FORMAT: FORMAT_VERSION}
        try:
            path = checkpoint_dcp.save(
                self.run_dir, self.step, self.raw_model, self.optimizer, rest, self.info
            )
        except Exception as e:
            if not checkpoint_dcp.disk_full(e):
                raise
            where = self.run_dir / checkpoint_dcp.folder_name(self.step)
            raise disk_full(where, "no space left") from None
        if self.info.is_main:
            prune(self.run_dir, self.cfg.keep_ckpts)
        return path

    def resume(self) -> bool:
        """Load the newest checkpoint that loads; False when the run starts fresh."""
        found = load_latest(self.run_dir, map_location=self.device, weights=not self.sharded)
        if found is None:
            return False
        state, path = found
        check_format(path, self.sharded)
        saved = state[CONFIG]
        was_tok = saved.get("tokenizer", tokenizer.DEFAULT)  # older checkpoints: GPT-2's
        if was_tok != self.cfg.tokenizer:
            where = Path(self.cfg.data) / MANIFEST
            raise StateError(mixed(where, self.cfg.tokenizer, f"{path} was trained on {was_tok}'s"))
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
        if self.sharded:  # resharded to this process count
            try:
                checkpoint_dcp.load_into(path, self.raw_model, self.optimizer)
            except StateError as e:  # damage only DCP's own load finds: every rank's
                if self.info.is_main:
                    path.rename(path.with_name(path.name + ".corrupt"))
                    log.warning("set aside %s as %s.corrupt: %s", path, path.name, e)
                distributed.barrier(self.info)
                return self.resume()  # the previous one (each damaged one set aside)
        else:
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
