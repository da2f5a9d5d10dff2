"""Append-only files of fixed-size records whose valid length a state file records.

The resume state of both data stages: tokenize's partial shard buffers, document
index and exact-dedup digests, and dedup's band-key partitions. A record becomes
durable with an fsynced append; the stage's next atomic state file (manifest.json,
dedup.json) records the new count; a rerun reads only that many, so a kill at any
instant leaves a prefix that the state file vouches for.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from model.errors import InputError


def append_items(path: Path, items: np.ndarray, start: int) -> None:
    """Append `items` (fixed-size records) to an append-only file that holds `start` valid ones.

    The file is first cut back to `start` records (dropping what a killed append left),
    then the new ones are written and fsynced; the caller records the new count in the
    next manifest, so a kill at any instant leaves the recorded prefix intact.
    """
    size = items.dtype.itemsize
    mode = "r+b" if path.exists() else "w+b"
    with open(path, mode) as f:
        f.truncate(start * size)
        f.seek(start * size)
        f.write(np.ascontiguousarray(items).tobytes())
        f.flush()
        os.fsync(f.fileno())


def load_items(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    """The first `count` records of an append-only file (the rest is from a killed append)."""
    try:
        arr = np.fromfile(path, dtype=dtype, count=count)
    except (OSError, ValueError):
        arr = np.empty(0, dtype=dtype)
    if len(arr) != count:
        raise InputError(
            f"{path}: resume state holds {len(arr)} records, the manifest expects {count}; "
            "pass force=true to start over"
        )
    return arr
