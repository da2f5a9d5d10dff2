"""DDP set-up and tear-down, from the environment torchrun provides.

`torchrun --nproc_per_node=N -m pipeline train ...` starts N processes with
RANK, LOCAL_RANK and WORLD_SIZE (and MASTER_ADDR/PORT) set; a plain
`python -m pipeline train` has none of them and runs as a single process.
NCCL on GPUs, gloo on the CPU.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from model.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env(environ: dict[str, str] | None = None) -> DistInfo:
    """Read RANK / LOCAL_RANK / WORLD_SIZE; a single process when they are absent."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return DistInfo()
    try:
        return DistInfo(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
            world_size=int(env["WORLD_SIZE"]),
        )
    except ValueError:
        raise ConfigError(
            "RANK/LOCAL_RANK/WORLD_SIZE are not integers; start several processes with torchrun"
        ) from None


def per_rank_accum(grad_accum: int, world_size: int) -> int:
    """Micro-steps per rank so that tokens per optimizer step stay the configured ones."""
    if grad_accum % world_size != 0:
        raise ConfigError(
            f"grad_accum={grad_accum} is not divisible by the {world_size} processes "
            "(torchrun --nproc_per_node x nodes); set grad_accum to a multiple of it"
        )
    return grad_accum // world_size


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_launcher(info: DistInfo) -> None:
    """Under torchrun: this worker is SIGKILLed by the kernel as soon as its launcher dies,
    however it died (SIGKILL of its pid or of its process group included: torchrun starts
    each worker in a session of its own, so a signal to the launcher's group misses them).

    Linux's parent-death signal, set as the worker starts; a launcher that died before it
    was set has left us to init (or a subreaper), and we stop at once. SIGKILL, not the
    SIGTERM that checkpoints: without a launcher the other ranks are dying too, and a
    checkpoint is every rank's or none. Elsewhere a worker outlives a killed launcher
    until its next collective fails (docs/training.md).
    """
    if not info.enabled or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
        return
    if parent == 1 or os.getppid() != parent:  # the launcher was gone before the prctl
        log.error("rank %d: the launcher is gone; stopping", info.rank)
        os._exit(1)


def setup(info: DistInfo, device_type: str) -> torch.device | None:
    """Join the process group; returns this rank's CUDA device (None on the CPU)."""
    if not info.enabled:
        return None
    cuda = device_type == "cuda"
    if cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    log.info("DDP rank %d/%d (%s)", info.rank, info.world_size, dist.get_backend())
    return torch.device("cuda", info.local_rank) if cuda else None


def teardown() -> None:
    """Leave the process group. Callers free their DDP models first (see trainer.train)."""
    if dist.is_available() and dist.is_initialized():
        # Gloo's worker threads release a finished collective's tensors under the GIL;
        # sleeping (GIL released) lets them finish before the group's destructor joins them.
        time.sleep(0.1)
        dist.destroy_process_group()


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True if `flag` is true on any rank (so all ranks stop at the same step)."""
    return bool(max_over_ranks(int(flag), info, device))


def max_over_ranks(value: int, info: DistInfo, device: torch.device) -> int:
    """The largest `value` of any rank (the value itself in a single process)."""
    return _reduce(value, info, device, dist.ReduceOp.MAX)


def min_over_ranks(value: int, info: DistInfo, device: torch.device) -> int:
    """The smallest `value` of any rank (the value itself in a single process)."""
    return _reduce(value, info, device, dist.ReduceOp.MIN)


def _reduce(value: int, info: DistInfo, device: torch.device, op: Any) -> int:
    if not info.enabled:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=op)
    return int(t.item())


def gather(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, index = rank (a list of one in a single process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
