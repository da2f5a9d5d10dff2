"""Checkpoints of a training run: `out/<run>/ckpt-<step>.pt`.

A checkpoint is one `torch.save`d dict whose keys are the constants below.
Everything in it is plain data (tensors, ints, floats, strings, lists, dicts),
so `torch.load(path, weights_only=True)` reads it and no pickled code runs.

- MODEL: state_dict of the bare GPT (no `_orig_mod.` / `module.` prefixes).
- OPTIMIZER, SCALER: `state_dict()`s of AdamW and the GradScaler.
- STEP: optimizer steps completed.
- RNG: one dict per DDP rank (index = rank) of torch CPU/CUDA, numpy and
  python RNG states, stored as tensors and ints (see `capture_rng`).
- LOADER: one `TrainLoader.state_dict()` per rank (ints and flags).
- LOSS_WINDOW: the sum and count of the train losses since the last metrics
  line, so a resumed run logs the same interval means.
- CONFIG: the resolved TrainConfig as a plain dict.
- FORMAT: the version of this layout.

Under `parallel: fsdp` a checkpoint is a folder, `ckpt-<step>.dcp/`, with the
same contents: the weights and optimizer state as torch.distributed.checkpoint
shards, the rest in its state.pt (model/checkpoint_dcp.py); every reader here
takes both, and reads such a folder's weights whole in one process.

File names are `ckpt-<step zero-padded to 8 digits>.pt`. A save goes to a
temporary name, is fsynced and renamed into place (then the folder is
fsynced), so a crash leaves either the old set or the new one, never a
partial file under a final name; the newest `keep` checkpoints are kept.
A full disk (ENOSPC, EDQUOT, or torch's zip writer failing for want of
space) is a ResourceError that says what a checkpoint needs, what is free
and which checkpoint is the last good one; `check_space` says it before a
save is even tried.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from model import checkpoint_dcp
from model.atomic import DISK_FULL, write_atomically
from model.errors import InputError, ResourceError, StateError

if TYPE_CHECKING:
    from model.gpt import GPT
    from model.train_config import TrainConfig

log = logging.getLogger(__name__)

MODEL = "model"
OPTIMIZER = "optimizer"
SCALER = "scaler"
STEP = "step"
RNG = "rng"
LOADER = "loader"
LOSS_WINDOW = "loss_window"
CONFIG = "config"
FORMAT = "format"
FORMAT_VERSION = 1

_NAME = re.compile(r"^ckpt-(\d+)\.(pt|dcp)$")  # a file, or an FSDP run's DCP folder
_TMP_PREFIX = ".tmp-"
# torch.save's zip writer turns a failed write into a RuntimeError, e.g. "[enforce fail at
# inline_container.cc:672] . unexpected pos 123 vs 456" or "PytorchStreamWriter failed writing"
_ZIP_WRITER_FAILED = ("inline_container", "PytorchStreamWriter", "unexpected pos")
GiB = 2**30


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.pt"


def step_of(path: Path) -> int:
    m = _NAME.match(path.name)
    assert m is not None, f"not a checkpoint name: {path}"
    return int(m.group(1))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints, oldest (lowest step) first."""
    folder = Path(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if is_checkpoint(p)]
    return sorted(found, key=step_of)


def is_checkpoint(path: Path) -> bool:
    """A `ckpt-<step>.pt` file or a `ckpt-<step>.dcp` folder (model/checkpoint_dcp.py)."""
    m = _NAME.match(path.name)
    return m is not None and (path.is_file() if m.group(2) == "pt" else path.is_dir())


def checkpoint_size(path: Path) -> int:
    return checkpoint_dcp.size_of(path) if path.is_dir() else path.stat().st_size


def prune(folder: Path, keep: int | None) -> None:
    """Delete all but the newest `keep` checkpoints (None or 0: keep all)."""
    if keep is None or keep <= 0:
        return
    for old in list_checkpoints(folder)[:-keep]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def check_format(path: Path, sharded: bool) -> None:
    """A run resumes the kind of checkpoint its `parallel` writes (StateError otherwise)."""
    if path.is_dir() == sharded:
        return
    was, remedy = ("fsdp", "a DCP folder") if path.is_dir() else ("ddp", "one file")
    raise StateError(
        f"{path} was written with parallel={was} ({remedy}); resume it with "
        f"parallel={was}, or use another out_dir"
    )


def save_checkpoint(
    run_dir: str | Path, step: int, state: dict[str, Any], keep: int | None = None
) -> Path:
    """Write `state` as `ckpt-<step>.pt` atomically; keep the newest `keep` checkpoints.

    `keep` defaults to `state[CONFIG]["keep_ckpts"]` when present (else all are kept).
    """
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{_TMP_PREFIX}*"):  # leftovers of a crash mid-save
        stale.unlink(missing_ok=True)
    state = {**state, STEP: int(step), FORMAT: FORMAT_VERSION}
    final = folder / checkpoint_name(step)
    tmp = folder / f"{_TMP_PREFIX}{final.name}"
    try:
        write_atomically(final, lambda f: torch.save(state, f), tmp)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise disk_full(final, e.strerror or "no space left") from None
    except RuntimeError as e:
        if not any(m in str(e) for m in _ZIP_WRITER_FAILED):
            raise
        raise disk_full(final, "the zip writer could not write: no space left?") from None
    if keep is None and isinstance(state.get(CONFIG), dict):
        keep = state[CONFIG].get("keep_ckpts")
    prune(folder, keep)
    return final


# --- disk space -----------------------------------------------------------------


def estimate_bytes(n_params: int, n_tensors: int, state_bytes: int) -> int:
    """A checkpoint's size before one exists: fp32 weights (4 P) and the optimizer's state
    (`state_bytes`, model/optim.py's state_bytes), plus 64 KiB (RNG states, config) and
    1 KiB per tensor (its step scalar and zip entries). Measured here: 0.04 % over for the
    demo model, 9 % over for the tests' 35 K-parameter one."""
    return 4 * n_params + state_bytes + 64 * 2**10 + 2**10 * n_tensors


def free_bytes(folder: str | Path) -> int:
    """Free bytes for an unprivileged writer on the filesystem of `folder` (or its parent)."""
    p = Path(folder).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def _last_good(folder: Path) -> str:
    ckpts = list_checkpoints(folder)
    return ckpts[-1].name if ckpts else "none yet"


def size_text(n: int) -> str:
    """Bytes as GiB, or MiB below 1 GiB."""
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / 2**20:.2f} MiB"


def disk_full(final: Path, why: str, need: int | None = None) -> ResourceError:
    free = free_bytes(final.parent)
    needed = f"a checkpoint needs {size_text(need)}, " if need else ""
    return ResourceError(
        f"disk full writing {final} ({why}): {needed}{size_text(free)} free; the last good "
        f"checkpoint is {_last_good(final.parent)}: free space (or lower keep_ckpts), then "
        "rerun the same command to resume"
    )


def check_space(run_dir: str | Path, step: int, need: int) -> None:
    """ResourceError unless the run's disk holds one more checkpoint of `need` bytes."""
    folder = Path(run_dir)
    if free_bytes(folder) < need:
        raise disk_full(folder / checkpoint_name(step), "not enough space", need)


def _read(path: Path, map_location: Any, weights: bool = True) -> dict[str, Any]:
    """A checkpoint as one dict; of a DCP folder, the weights whole (unless `weights` is
    False) and no optimizer state (model/checkpoint_dcp.py loads that into a run)."""
    if path.is_dir():
        state = checkpoint_dcp.read_meta(path)
        if weights:
            from model.gpt import GPT, GPTConfig

            model = GPT(GPTConfig.from_train(config_from_dict(state[CONFIG])))
            state[MODEL] = checkpoint_dcp.read_full(path, model)
    else:
        state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or STEP not in state or (weights and MODEL not in state):
        raise ValueError("not a codegpt checkpoint (no model/step keys)")
    if state.get(FORMAT) != FORMAT_VERSION:
        raise ValueError(f"format {state.get(FORMAT)!r}, this code reads {FORMAT_VERSION}")
    return state


def load_latest(
    run_dir: str | Path, map_location: Any = "cpu", weights: bool = True
) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads, and its path; None if the run has none.

    A newer checkpoint that does not load (truncated, corrupt) is reported with
    a warning naming it, and the previous one is tried. If none loads, that is
    an InputError: starting over silently would throw the run away.
    """
    paths = list_checkpoints(run_dir)
    for path in reversed(paths):
        try:
            return _read(path, map_location, weights), path
        except Exception as e:  # torch raises many types for a damaged zip/pickle
            log.warning("checkpoint %s does not load (%s); trying the previous one", path, e)
    if paths:
        raise InputError(
            f"{run_dir}: none of the {len(paths)} checkpoints loads; move them away "
            "to start over, or restore one from a backup"
        )
    return None


# --- RNG states as plain data -------------------------------------------------


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """This process's RNG states as tensors and ints (torch.load(weights_only) safe)."""
    np_state = np.random.get_state()  # ('MT19937', uint32[624], pos, has_gauss, gauss)
    assert isinstance(np_state, tuple)
    py_version, py_state, py_gauss = random.getstate()  # (3, 625 ints, float | None)
    cuda: torch.Tensor | None = None
    if device is not None and device.type == "cuda":
        cuda = torch.cuda.get_rng_state(device)
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": cuda,
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python_version": int(py_version),
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": py_gauss,
    }


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch_cpu"].cpu())
    if device is not None and device.type == "cuda" and state.get("torch_cuda") is not None:
        torch.cuda.set_rng_state(state["torch_cuda"].cpu(), device)
    keys = state["numpy_keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(
        (
            "MT19937",
            keys,
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    py_state = tuple(int(v) for v in state["python_state"].tolist())
    random.setstate((state["python_version"], py_state, state["python_gauss"]))


# --- for sampling and export --------------------------------------------------


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a checkpoint's CONFIG; keys this code no longer knows are dropped.
    A checkpoint from before fill-in-the-middle (no `fim_rate`) was trained without it;
    one from before the tokenizer key (or `auto`, never resolved) on GPT-2's tokens."""
    from model.config import build
    from model.train_config import TrainConfig

    values = {"fim_rate": 0.0, **values}
    if values.get("tokenizer", "auto") == "auto":
        values["tokenizer"] = "gpt2"
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    dropped = sorted(set(values) - known)
    if dropped:
        log.warning("checkpoint config keys not known to this code, ignored: %s", dropped)
    return build(TrainConfig, {k: v for k, v in values.items() if k in known}, "checkpoint")


def load_for_inference(
    path_or_run_dir: str | Path, map_location: Any = "cpu"
) -> tuple[GPT, TrainConfig, int]:
    """(model in eval mode, its training config, its step) from a file or a run folder."""
    from model.gpt import GPT, GPTConfig

    target = Path(path_or_run_dir)
    if target.is_dir() and not is_checkpoint(target):
        found = load_latest(target, map_location)
        if found is None:
            raise InputError(f"{target}: no checkpoint (ckpt-*.pt); train first (`make train`)")
        state, path = found
    elif is_checkpoint(target) or target.is_file():
        path = target
        try:
            state = _read(target, map_location)
        except Exception as e:
            raise InputError(f"{target}: checkpoint does not load ({e}); pick another") from None
    else:
        raise InputError(f"{target}: no such checkpoint or run folder; train first (`make train`)")
    cfg = config_from_dict(state[CONFIG])
    model = GPT(GPTConfig.from_train(cfg))
    model.load_state_dict(state[MODEL])
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    log.info("loaded %s (step %d)", path, state[STEP])
    return model, cfg, int(state[STEP])
