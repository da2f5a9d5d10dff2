"""The tokenize stage's resume files beside the manifest, and clearing an output.

`manifest.json` (model/manifest.py: the record, its one reader and writer) sits
beside the shards and is rewritten atomically (temporary name, fsync, rename)
at every checkpoint. It records what the output is
a function of (the input files with size and mtime, the config keys that shape
the output, the tokenizer and a hash of its vocabulary), what has been written
(per split, the shards and their token counts), where to resume, and the
document accounting (`read == tokenized + sum(skipped.values())`).

Resume state beside the manifest: train and val fill at different rates, so
when a shard of one split completes, the other split holds a partial buffer
that is in no shard yet. Its tokens are appended to `<split>_<NNNNNN>.partial`
(raw little-endian uint16, NNNNNN = the index of the shard they will become),
fsynced, and the manifest records how many tokens of that file are valid.
Appends only ever go past the recorded length, so a kill in the middle of one
leaves the recorded prefix intact; the next append truncates the file to the
recorded length first (pipeline/corpus/appendonly.py, which dedup's partition files
use too). A partial file is deleted once its shard is complete
and a manifest says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model import shards
from model.manifest import Manifest, ShardEntry, manifest_path, write_manifest
from pipeline.corpus.appendonly import append_items, load_items

PARTIAL_SUFFIX = ".partial"
PARTIAL_DTYPE = np.dtype("<u2")


def partial_path(folder: Path, split: str, index: int) -> Path:
    return Path(folder) / (shards.shard_name(split, index).removesuffix(".npy") + PARTIAL_SUFFIX)


def append_partial(folder: Path, split: str, index: int, buf: np.ndarray, start: int) -> None:
    """Make tokens buf[:len(buf)] durable in the partial file, given buf[:start] already is."""
    tokens = np.ascontiguousarray(buf[start:], dtype=PARTIAL_DTYPE)
    append_items(partial_path(folder, split, index), tokens, start)


def load_partial(folder: Path, split: str, index: int, count: int) -> np.ndarray:
    """The first `count` tokens of a partial file (the rest is from a killed append)."""
    arr = load_items(partial_path(folder, split, index), PARTIAL_DTYPE, count)
    return arr.astype(np.uint16, copy=False)


def remove_partials(folder: Path, keep: set[Path] | None = None) -> None:
    for p in Path(folder).glob(f"*{PARTIAL_SUFFIX}"):
        if keep is None or p not in keep:
            p.unlink(missing_ok=True)


def clear(folder: Path) -> int:
    """Delete every shard, partial file, temporary and the manifest of `folder`."""
    folder = Path(folder)
    n = 0
    if not folder.is_dir():
        return 0
    # The manifest goes first: a kill halfway leaves shards without a manifest,
    # which a rerun refuses (or force=true clears), never a manifest whose
    # shards are half gone.
    manifest_path(folder).unlink(missing_ok=True)
    shards.fsync_dir(folder)
    for split in shards.SPLITS:
        for p in folder.glob(f"{split}_*.npy"):
            p.unlink()
            n += 1
    remove_partials(folder)
    shards.remove_temporaries(folder)
    return n


def write_for_shards(folder: Path, tokenizer: dict[str, Any]) -> Manifest:
    """A complete manifest for shards made by other means (tests, benchmarks), listing them.

    `tokenizer` is what the shards were made with: {"name", "vocab_sha256"} for GPT-2,
    or {"name", "n_vocab"} for anything else, so the trainer can check its vocabulary.
    """
    listed = {
        s: [ShardEntry(p.name, len(shards.open_shard(p))) for p in shards.list_shards(folder, s)]
        for s in shards.SPLITS
    }
    m = Manifest(complete=True, tokenizer=tokenizer, shards=listed)
    m.counts.tokens = {s: sum(e.tokens for e in listed[s]) for s in shards.SPLITS}
    write_manifest(folder, m)
    return m
