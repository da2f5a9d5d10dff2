"""The token shard folder: its shards and the val document index. The one module that owns them.

A shard is a numpy `.npy` file: dtype uint16, one dimension, exactly
`shard_tokens` long except the last shard of a split. Names are
`<split>_<NNNNNN>.npy`. A shard is written under a temporary name, fsynced and
renamed into place, so no reader ever sees a partial one. Readers memory-map
(`np.load(path, mmap_mode="r")`) and never read a whole shard into RAM; plain
`np.load(path)` works too, as build-nanogpt's loader does.

`manifest.json` beside the shards is model/manifest.py's record (its one reader
and writer): the tokenize rerun check and the trainer's data contract both go
through it.

A val shard's document index, `val_NNNNNN.docs.npy` (written by
pipeline/tokenize/docindex.py, read here by `read_doc_index`): records of
`DOC_RECORD`, one per document with tokens in the shard, in order, tiling it:
`start` (offset in the shard), `tokens` (in the shard, end-of-text included),
`bytes` (the document's UTF-8 size where it starts, 0 on a continuation),
`language` (S32).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from model.atomic import fsync_dir as fsync_dir  # re-exported: callers fsync folders
from model.atomic import write_atomically
from model.errors import InputError
from model.manifest import MANIFEST as MANIFEST  # re-exported: the folder's file names
from model.manifest import SPLITS as SPLITS
from model.manifest import Manifest

DTYPE = np.uint16
TMP_SUFFIX = ".tmp"  # model/manifest.py's too
_NAME = re.compile(r"^(train|val)_(\d{6})\.npy$")
DOC_RECORD = np.dtype([("start", "<i8"), ("tokens", "<i8"), ("bytes", "<i8"), ("language", "S32")])


def shard_name(split: str, index: int) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"{split}_{index:06d}.npy"


def write_shard(folder: Path, split: str, index: int, tokens: np.ndarray) -> Path:
    """Write `tokens` as shard `index` of `split`: temp name, fsync, rename."""
    if tokens.dtype != DTYPE or tokens.ndim != 1:
        raise ValueError(f"shard must be 1-D {DTYPE.__name__}, got {tokens.dtype} {tokens.shape}")
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / shard_name(split, index)
    return write_atomically(
        final,
        lambda f: np.save(f, tokens, allow_pickle=False),
        final.with_name(final.name + TMP_SUFFIX),
    )


def open_shard(path: Path) -> np.ndarray:
    """Memory-map a shard, checking its header; errors name the file and the remedy."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: shard not found; rerun `make tokenize`") from None
    except (ValueError, OSError) as e:
        raise InputError(
            f"{path}: not a readable .npy shard ({e}); delete it and rerun `make tokenize`"
        ) from None
    if arr.dtype != DTYPE or arr.ndim != 1:
        raise InputError(
            f"{path}: shard has dtype {arr.dtype} and shape {arr.shape}, expected 1-D uint16; "
            "it was not written by `make tokenize`: delete it and rerun"
        )
    return arr


def list_shards(folder: Path, split: str) -> list[Path]:
    """The complete shards of `split` in order; a gap in the numbering is an error."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    found = sorted(p for p in Path(folder).glob(f"{split}_*.npy") if _NAME.match(p.name))
    for i, p in enumerate(found):
        if p.name != shard_name(split, i):
            raise InputError(
                f"{folder}: {split} shards are not numbered 0..{len(found) - 1} "
                f"(found {p.name} at position {i}); rerun `make tokenize` with force=true"
            )
    return found


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete leftovers of interrupted writes (`*.tmp`); returns what was removed."""
    removed = []
    if Path(folder).is_dir():
        for p in Path(folder).glob(f"*{TMP_SUFFIX}"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def read_doc_index(folder: Path, manifest: Manifest) -> np.ndarray | None:
    """The whole val split's document index, `start` made an offset into the split's
    stream (the val shards concatenated); None when its shards have no index."""
    entries = manifest.shards["val"]
    if not entries or any(e.docs is None for e in entries):
        return None
    parts, offset = [], 0
    for e in entries:
        path = Path(folder) / str(e.docs)
        try:
            rec = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputError(
                f"{path}: unreadable document index ({err}); tokenize again (force=true)"
            ) from None
        if rec.dtype != DOC_RECORD or int(rec["tokens"].sum()) != e.tokens:
            raise InputError(
                f"{path}: not the document index of {e.name}; tokenize again (force=true)"
            )
        rec = rec.copy()
        rec["start"] += offset
        parts.append(rec)
        offset += e.tokens
    return np.concatenate(parts)
