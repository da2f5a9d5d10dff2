"""Where and how a run computes: device, precision, seeds, the resolved config.

Shared by the smoke stage, training and the benchmarks, so that they all make
the same choices from the same config keys (`device`, `dtype`, `compile`).
`micro_batch: auto` is model/autobatch.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch

from model.errors import ConfigError
from model.hardware import auto_dtype
from model.train_config import TrainConfig

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """The resolved `dtype` key: what autocast runs in and whether a GradScaler is needed."""

    name: str  # float32, bfloat16 or float16
    device_type: str  # cuda or cpu

    @property
    def uses_scaler(self) -> bool:
        return self.name == "float16"  # fp16 gradients underflow without loss scaling

    def autocast(self) -> AbstractContextManager[object]:
        if self.name == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=_DTYPES[self.name])


def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=auto or cpu")
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def resolve_precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """The `dtype` key on `device`; `auto` follows model.hardware.auto_dtype, which asks
    the card's compute capability (not torch.cuda.is_bf16_supported: it counts emulation)."""
    name: str = cfg.dtype
    if device.type == "cpu" and name == "float16":
        raise ConfigError("dtype=float16 needs a CUDA GPU; use dtype=auto or float32 on CPU")
    if name == "auto":
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        name = auto_dtype(device.type, capability)
    return Precision(name=name, device_type=device.type)


def enable_fast_math(device: torch.device) -> None:
    """TF32 for fp32 matmuls and convolutions on Ampere and newer (10-bit mantissa, fp32 range)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def maybe_compile(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.nn.Module | Callable[..., object]:
    """torch.compile on a GPU when `compile: true`; eager elsewhere (CPU compile is slow to start)."""
    if not cfg.compile:
        return model
    if device.type != "cuda":
        log.info("compile=true ignored on %s (compiles only on a GPU)", device)
        return model
    log.info("compiling the model (the first steps are slow)")
    return torch.compile(model)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def replace(cfg: TrainConfig, **changes: object) -> TrainConfig:
    """A checked copy of `cfg` with `changes` (runs `__post_init__` again)."""
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


def inference_precision(
    cfg: TrainConfig, device: str, dtype: str
) -> tuple[torch.device, Precision, torch.dtype]:
    """Where and in what a checkpoint generates (sample, serve): the `device` and `dtype`
    keys against its training config (`auto` = the run's dtype), float16 falling back
    to float32 on the CPU; and the KV cache's dtype."""
    where = resolve_device(replace(cfg, device=device))
    name = cfg.dtype if dtype == "auto" else dtype
    if where.type == "cpu" and name == "float16":
        log.info("float16 needs a GPU; generating in float32 on the CPU")
        name = "float32"
    precision = resolve_precision(replace(cfg, dtype=name), where)
    return where, precision, _DTYPES[precision.name]
