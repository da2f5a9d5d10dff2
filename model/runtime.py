"""Where and how a run computes: device, precision, seeds, the resolved config.

Shared by the smoke stage, training and the benchmarks, so that they all make
the same choices from the same config keys (`device`, `dtype`, `compile`,
`micro_batch: auto`).
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

from model.config import TrainConfig
from pipeline.errors import ConfigError

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
    """`dtype: auto` is bf16 where the GPU supports it, fp16 (+ GradScaler) otherwise, fp32 on CPU."""
    name = cfg.dtype
    if device.type == "cpu":
        if name == "float16":
            raise ConfigError("dtype=float16 needs a CUDA GPU; use dtype=auto or float32 on CPU")
        if name == "auto":
            name = "float32"
    elif name == "auto":
        name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
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


def resolve_config(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """The config a run actually uses: `micro_batch: auto` replaced by a number.

    The one place where the smoke stage and training resolve it, before any
    loader is built, so that both see the same micro-batch and accumulation.
    """
    if cfg.micro_batch == "auto":
        from model.autobatch import resolve_micro_batch  # the memory planner, only when asked

        resolved = resolve_micro_batch(cfg, device)
        log.info(
            "micro_batch auto -> %s (grad_accum %d)", resolved.micro_batch, resolved.grad_accum
        )
        cfg = resolved
    assert isinstance(cfg.micro_batch, int)
    return cfg


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
