"""The val split's document index: which document, language and size each val token belongs to.

Beside each val shard `val_NNNNNN.npy` the stage writes `val_NNNNNN.docs.npy`
(`np.load` reads it; the manifest lists it as the shard's `docs`): one record
per document with tokens in that shard, in order, of dtype `RECORD`:

    start     int64  offset of the document's first token in this shard (0 for a continuation)
    tokens    int64  its tokens in this shard, its end-of-text token included
    bytes     int64  its UTF-8 bytes, on the record of the shard where it starts (0 on a continuation)
    language  S32    its `language` value, UTF-8 cut at 32 bytes; `unknown` when null or absent

The records of a shard tile it exactly (their tokens sum to its length), and a
document's bytes count once, so evaluation can score each language and give
bits per byte (model/docindex readers: `make eval`). Train shards get no index.

Resume: records of documents that reach into the unfinished val shard are
appended to `val_NNNNNN.docs.partial` (pipeline/corpus/appendonly.py) and
the manifest's `partial_docs` says how many are valid, as for the tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model import shards
from model.atomic import write_atomically
from pipeline.corpus.appendonly import append_items, load_items

RECORD = shards.DOC_RECORD  # the format is model/shards.py's
# the in-progress form: `offset` is the document's start in the whole val stream
_OPEN = np.dtype([("offset", "<i8"), ("tokens", "<i8"), ("bytes", "<i8"), ("language", "S32")])
SUFFIX = ".docs.npy"


def index_name(index: int) -> str:
    return shards.shard_name("val", index).removesuffix(".npy") + SUFFIX


def partial_path(folder: Path, index: int) -> Path:
    """The val shard's document records not yet in a finished index file."""
    return Path(folder) / (shards.shard_name("val", index).removesuffix(".npy") + ".docs.partial")


class DocIndex:
    """The open records: the documents reaching into the unfinished val shard, in input
    order (a checkpoint, at a batch boundary, persists them all)."""

    def __init__(self, folder: Path, shard_tokens: int) -> None:
        self.folder, self.S = Path(folder), shard_tokens
        self.open = np.empty(0, dtype=_OPEN)
        self.persisted = 0  # open[:persisted] are in the current shard's partial file
        self.shard = 0  # the unfinished val shard
        self.stream = 0  # val tokens of the documents added so far

    def add(self, ntok: np.ndarray, nbytes: np.ndarray, langs: list[str]) -> None:
        """Add val documents in input order."""
        offsets = self.stream + np.concatenate([[0], np.cumsum(ntok)[:-1]]).astype(np.int64)
        self.stream += int(ntok.sum())
        new = np.empty(len(ntok), dtype=_OPEN)
        new["offset"], new["tokens"], new["bytes"] = offsets, ntok, nbytes
        new["language"] = [name.encode("utf-8")[:32] for name in langs]
        self.open = np.concatenate([self.open, new])

    def write_shard(self, length: int) -> str:
        """The index of the val shard just written (`length` tokens); the records of a
        document that goes on into the next shard stay open."""
        lo, hi = self.shard * self.S, self.shard * self.S + length
        o = self.open
        end = o["offset"] + o["tokens"]
        mine = o[(o["offset"] < hi) & (end > lo)]
        rec = np.empty(len(mine), dtype=RECORD)
        rec["start"] = np.maximum(mine["offset"] - lo, 0)
        rec["tokens"] = np.minimum(mine["offset"] + mine["tokens"], hi) - np.maximum(
            mine["offset"], lo
        )
        rec["bytes"] = np.where(mine["offset"] >= lo, mine["bytes"], 0)
        rec["language"] = mine["language"]
        assert int(rec["tokens"].sum()) == length, "the document index does not tile its shard"
        name = index_name(self.shard)
        write_atomically(self.folder / name, lambda f: np.save(f, rec, allow_pickle=False))
        gone = int(np.searchsorted(end, hi, side="right"))  # ends are increasing
        self.open = self.open[gone:]
        self.persisted, self.shard = 0, self.shard + 1
        return name

    def persist(self) -> None:
        """Make the open records durable in the current partial file."""
        n = len(self.open)
        if n > self.persisted:
            new = self.open[self.persisted : n]
            append_items(partial_path(self.folder, self.shard), new, self.persisted)
            self.persisted = n

    def restore(self, shard: int, count: int, stream: int) -> None:
        self.shard, self.stream, self.persisted = shard, stream, count
        if count:
            self.open = load_items(partial_path(self.folder, shard), _OPEN, count)

    def remove_partial(self, shard: int) -> None:
        partial_path(self.folder, shard).unlink(missing_ok=True)
