"""`python -m pipeline train`: train, resuming from the newest good checkpoint by itself.

Refuses to start without `out/<run>/smoke.ok` for the same config (run
`make smoke` first); CODEGPT_SKIP_SMOKE_CHECK=1 skips that check (tests,
experts). Under `torchrun --nproc_per_node=N -m pipeline train` it runs DDP.
The loop lives in model/trainer.py.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from pathlib import Path

import torch

from model import distributed
from model.atomic import DISK_FULL
from model.autobatch import resolve_config
from model.checkpoint import check_space, disk_full
from model.distributed import DistInfo
from model.lock import exclusive
from model.rundir import check_smoke_stamp, write_config
from model.runtime import resolve_device
from model.train_config import TrainConfig
from model.trainer import Trainer

log = logging.getLogger(__name__)

CONFIG = TrainConfig
DEFAULT_CONFIG = "configs/gpt2-124m.yaml"


def run(cfg: TrainConfig) -> int:
    check_smoke_stamp(cfg)
    return train(cfg)


def open_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    """This rank's device; joins the DDP process group when torchrun started us."""
    want_cuda = cfg.device != "cpu" and torch.cuda.is_available()
    local = distributed.setup(info, "cuda" if want_cuda else "cpu")
    return local if local is not None else resolve_device(cfg)


def train(cfg: TrainConfig) -> int:
    """The train stage: resolve, lock the run folder, resume if possible, fit. The exit code."""
    info = distributed.from_env()
    distributed.die_with_launcher(info)  # a worker never outlives torchrun
    distributed.per_rank_accum(cfg.grad_accum, info.world_size)  # fail before any work
    device = open_device(cfg, info)
    run_dir = Path(cfg.out_dir)
    trainer: Trainer | None = None
    try:
        # one writer per run folder: a second trainer stops here, naming the first
        with exclusive(run_dir, "train") if info.is_main else contextlib.nullcontext():
            cfg = resolve_config(cfg, device)
            if info.is_main:
                write_config(cfg, run_dir)
                log.info(
                    "training on %s, %d process(es): %d tokens per step",
                    device,
                    info.world_size,
                    cfg.tokens_per_step,
                )
            trainer = Trainer(cfg, device, run_dir, info)
            trainer.resume()
            if info.is_main:  # before any step: a full disk costs no training
                check_space(run_dir, trainer.step, trainer.checkpoint_bytes())
            return trainer.fit()
    except OSError as e:  # metrics or config.yaml on a full disk
        if e.errno not in DISK_FULL:
            raise
        where = Path(e.filename) if e.filename else run_dir / "metrics.jsonl"
        raise disk_full(where, e.strerror or "no space left") from None
    finally:
        # DDP's Reducer holds the process group. Left to the end of this frame, it would
        # destroy the gloo group from a destructor that holds the GIL and joins gloo's
        # worker threads, which may need the GIL to drop their last work: a deadlock seen
        # here about 1 run in 10. So free the model while the group is alive, then teardown.
        trainer = None
        gc.collect()
        distributed.teardown()
