"""Checkpoints of an FSDP run (`parallel: fsdp`): `out/<run>/ckpt-<step>.dcp/` folders.

A folder holds
- the weights and the optimizer's state, written with `torch.distributed.checkpoint`
  (DCP): each rank writes its own shards (`__<rank>_0.distcp`), rank 0 the `.metadata`;
  the keys are model/checkpoint.py's MODEL and OPTIMIZER over the parameters' names
  (`torch.distributed.checkpoint.state_dict`, so the two halves of Muon + AdamW are one
  optimizer state, as in a .pt checkpoint);
- `state.pt`: the rest of a .pt checkpoint's dict (step, the RNG and loader states of
  every rank, the loss window, the config, the format), written by rank 0.

Atomic as the .pt files: every rank writes into `.tmp-ckpt-<step>.dcp/`; once all
have, rank 0 writes state.pt last, fsyncs and renames the folder into place, so a kill
mid-save leaves the previous checkpoints as they were (and the temporary folder,
removed by the next save). DCP reshards on load: a run resumes with any number of
processes, and one process reads the weights whole (`read_full`: sample, eval,
export and serve).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from model import distributed
from model.atomic import DISK_FULL, fsync_dir, write_atomically
from model.distributed import DistInfo
from model.errors import StateError

META = "state.pt"
MODEL, OPTIMIZER = "model", "optimizer"  # model/checkpoint.py's keys
TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def _one_process_is_meant() -> Iterator[None]:
    """DCP warns that it assumes a single process when there is no process group: here
    that is what `parallel: fsdp` with one process means."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def folder_name(step: int) -> str:
    return f"ckpt-{step:08d}.dcp"


def size_of(path: Path) -> int:
    """Bytes under a checkpoint folder."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _parts(optimizer: Any) -> list[torch.optim.Optimizer]:
    from model.optim import parts

    return parts(optimizer)


def save(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: Any,
    rest: dict[str, Any],
    info: DistInfo,
) -> Path:
    """A collective: every rank calls it with the same `rest`; the folder's final path."""
    final = run_dir / folder_name(step)
    tmp = run_dir / f"{TMP_PREFIX}{final.name}"
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(f"{TMP_PREFIX}*"):  # leftovers of a kill mid-save
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
        tmp.mkdir()
    distributed.barrier(info)
    model_sd, optim_sd = get_state_dict(model, _parts(optimizer))
    with _one_process_is_meant():
        dcp.save({MODEL: model_sd, OPTIMIZER: optim_sd}, checkpoint_id=tmp)
    if info.is_main:
        write_atomically(tmp / META, lambda f: torch.save(rest, f))
        fsync_dir(tmp)
        os.replace(tmp, final)
        fsync_dir(run_dir)
    distributed.barrier(info)
    return final


def read_meta(path: Path) -> dict[str, Any]:
    """state.pt of a checkpoint folder (plain data: weights_only)."""
    meta = torch.load(path / META, map_location="cpu", weights_only=True)
    if not isinstance(meta, dict) or "step" not in meta:
        raise ValueError(f"{META} is not a codegpt checkpoint's state (no step)")
    if not (path / ".metadata").is_file():
        raise ValueError("no DCP .metadata (the save did not finish)")
    check_files(path)
    return meta


def check_files(path: Path) -> None:
    """Every byte range that `.metadata` says the folder holds is there: a shard file
    missing or cut short is a ValueError naming it, found before any rank's `dcp.load`
    (whose CheckpointException derives from BaseException and would end the run)."""
    try:
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as e:
        raise ValueError(f"its .metadata does not read ({e})") from None
    need: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(need.items()):
        f = path / name
        have = f.stat().st_size if f.is_file() else None
        if have is None or have < size:
            got = "missing" if have is None else f"{have:,} bytes"
            raise ValueError(f"its shard {name} is {got}, .metadata says {size:,}")


def load_into(path: Path, model: torch.nn.Module, optimizer: Any) -> None:
    """The folder's weights and optimizer state into this run's (sharded or not) model and
    optimizer, resharded to this process count (a collective under torchrun)."""
    opts = _parts(optimizer)
    model_sd, optim_sd = get_state_dict(model, opts)  # templates: shapes and shardings
    state: dict[str, Any] = {MODEL: model_sd, OPTIMIZER: optim_sd}
    with _one_process_is_meant(), _as_error(path):
        dcp.load(state, checkpoint_id=path)  # in place: the shards this rank holds
    set_state_dict(model, opts, model_state_dict=state[MODEL], optim_state_dict=state[OPTIMIZER])


@contextlib.contextmanager
def _as_error(path: Path) -> Iterator[None]:
    """DCP's CheckpointException (a BaseException, not an Exception) as one line naming
    the folder: damage that check_files cannot see. Its callers fall back to the previous
    checkpoint (resume sets the folder aside; load_latest tries the one before)."""
    try:
        yield
    except CheckpointException as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StateError(f"{path} does not load ({first[:200]})") from None


def read_full(path: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights whole, as plain tensors shaped as `model`'s, in one process."""
    weights = {k: torch.empty_like(v) for k, v in model.state_dict().items()}
    with _one_process_is_meant(), _as_error(path):
        dcp.load({MODEL: weights}, checkpoint_id=path, no_dist=True)
    return weights


def disk_full(e: BaseException) -> bool:
    """DCP wraps each rank's failure: is one of them a full disk?"""
    seen: list[BaseException] = [e]
    while seen:
        err = seen.pop()
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            return True
        failures = getattr(err, "failures", None)
        if isinstance(failures, dict):
            seen += [f for f in failures.values() if isinstance(f, BaseException)]
        if err.__cause__ is not None:
            seen.append(err.__cause__)
    return "No space left" in str(e)
