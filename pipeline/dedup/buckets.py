"""The band keys on disk, and the clusters they make.

Phase 1 (signing) appends one record (band key, row id) per band of every
signed document to one of P partition files, chosen by the key's top bits,
in input order; the state file records how many records of each are valid
(an append-only file is cut back to that count on resume, manifest.py's
`append_items`). P is chosen from the input's row count so that a partition
holds about `PARTITION_BYTES`, and phase 2 never needs more than one
partition in memory: memory stays flat however large the input.

Phase 2 (clustering): each partition is sorted by (key, row id); documents
sharing a key are candidates, and each is joined to the smallest row id of
its bucket (star edges, written to disk). Connected components over all
edges (a vectorised union-find: hook each root to the smaller root, then
compress, until no edge joins two roots) give the clusters; every document
whose component has a smaller row id is dropped, so the first in input order
is kept. Its memory: a 4-byte parent per input row, and while paths are compressed
three more arrays of that size (the rows, their roots and the roots' parents): 16 B a
row at the peak, 1.8 GB for 115 M rows (the whole github-code data set), 80 MB for the
story's 5 M; the watchdog measures it and is checked after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from pipeline.corpus.appendonly import append_items, load_items
from pipeline.corpus.decision import ROW_BITS

RECORD = np.dtype([("key", "<u8"), ("id", "<u8")])
PARTITION_BYTES = 64 * 2**20
EDGE = np.dtype([("a", "<u4"), ("b", "<u4")])  # dense row indices


def partitions_for(rows: int, bands: int) -> int:
    """A power of two such that a partition holds about PARTITION_BYTES of records."""
    need = rows * bands * RECORD.itemsize / PARTITION_BYTES
    p = 1
    while p < need:
        p *= 2
    return p


def part_path(folder: Path, p: int) -> Path:
    return Path(folder) / f"keys-{p:05d}.bin"


class Partitions:
    """Append-only partition files of (key, id) records, buffered in memory until `flush`."""

    def __init__(self, folder: Path, count: int, valid: list[int] | None = None) -> None:
        self.folder, self.count = Path(folder), count
        self.bits = count.bit_length() - 1  # count is a power of two
        self.valid = list(valid) if valid is not None else [0] * count  # records on disk
        self.pending: list[list[np.ndarray]] = [[] for _ in range(count)]
        self.buffered = 0

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        """keys (k, bands) and ids (k,): one record per band, to the partition of its key."""
        rec = np.empty(keys.size, dtype=RECORD)
        rec["key"] = keys.reshape(-1)
        rec["id"] = np.repeat(ids, keys.shape[1])
        part = rec["key"] >> np.uint64(64 - self.bits) if self.bits else np.zeros(len(rec), int)
        for p in np.unique(part):
            self.pending[int(p)].append(rec[part == p])
        self.buffered += rec.nbytes

    def flush(self) -> list[int]:
        """Append every buffered record, fsynced; the valid counts to record in the state."""
        for p, chunks in enumerate(self.pending):
            if chunks:
                rec = np.concatenate(chunks)
                append_items(part_path(self.folder, p), rec, self.valid[p])
                self.valid[p] += len(rec)
        self.pending = [[] for _ in range(self.count)]
        self.buffered = 0
        return list(self.valid)

    def load(self, p: int) -> np.ndarray:
        if not self.valid[p]:
            return np.empty(0, dtype=RECORD)
        return load_items(part_path(self.folder, p), RECORD, self.valid[p])

    def remove(self) -> None:
        for p in range(self.count):
            part_path(self.folder, p).unlink(missing_ok=True)


def dense(ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Row ids (file << 40 | row) -> indices into all input rows (offsets: first row of each file)."""
    files = (ids >> np.uint64(ROW_BITS)).astype(np.int64)
    rows = (ids & np.uint64((1 << ROW_BITS) - 1)).astype(np.int64)
    return offsets[files] + rows


def bucket_edges(rec: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Star edges of one partition: every record joined to the first id of its key."""
    if len(rec) < 2:
        return np.empty(0, dtype=EDGE)
    rec = np.sort(rec, order=("key", "id"))
    first = np.concatenate([[True], rec["key"][1:] != rec["key"][:-1]])
    head = np.maximum.accumulate(
        np.where(first, np.arange(len(rec)), 0)
    )  # index of the run's first
    joins = ~first & (rec["id"] != rec["id"][head])
    edges = np.empty(int(joins.sum()), dtype=EDGE)
    edges["a"] = dense(rec["id"][head[joins]], offsets)
    edges["b"] = dense(rec["id"][joins], offsets)
    return edges


def _roots(parent: np.ndarray, x: np.ndarray) -> np.ndarray:
    r = parent[x]
    while True:
        up = parent[r]
        if np.array_equal(up, r):
            return r
        r = up


def components(n: int, edge_chunks: Callable[[], Iterator[np.ndarray]]) -> np.ndarray:
    """parent (n,): each row's component's smallest row (itself when it has no edge)."""
    parent = np.arange(n, dtype=np.uint32 if n < 2**32 else np.uint64)
    changed = True
    while changed:
        changed = False
        for e in edge_chunks():
            ra, rb = _roots(parent, e["a"]), _roots(parent, e["b"])
            lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
            join = lo != hi
            if join.any():
                np.minimum.at(parent, hi[join], lo[join])  # hook the larger root under the smaller
                changed = True
        parent = _roots(parent, np.arange(n, dtype=parent.dtype))  # compress every path
    return parent
