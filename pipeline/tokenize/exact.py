"""Exact dedup (`dedup: exact`): the digests seen so far, decided in input order.

A worker gives every row that passed the rules before `duplicate` a digest
(rules.py: blake2b-64 of the text without ASCII whitespace). The writer, which
takes batches in input order, calls `Seen.mark`: a row whose digest is already
in the set, or appeared in an earlier row of the same batch, becomes a
`duplicate` (its tokens are dropped), and the others join the set. So the
first copy in input order (sorted files, row order) is the one kept, for any
worker count and any batch size.

Memory: 8 bytes per distinct document, in sorted numpy runs that are merged
as they grow (a log-structured set: lookups are a binary search per run, at
most ~log2(n) runs; a merge briefly holds its two runs twice). For 10 M
distinct documents that is 80 MB; the watchdog counts it with the rest of the
main process. Two different documents share a digest with probability about
n^2 / 2^65 (one in 370 for 100 M documents): then the later one is dropped.

Resume: the digests are also appended, in input order, to `dedup.digests`
beside the shards (raw little-endian uint64); each manifest records how many
of them are valid, exactly those of the documents before its resume position.
A rerun loads that many (pipeline/corpus/appendonly.py) and goes on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.corpus.appendonly import append_items, load_items
from pipeline.corpus.batches import STATUS, Encoded

FILE = "dedup.digests"
DTYPE = np.dtype("<u8")
_TOKENIZED, _DUPLICATE = STATUS.index("tokenized"), STATUS.index("duplicate")
_CANDIDATES = (_TOKENIZED, STATUS.index("tokenizer_error"))  # the rows that passed the rules


class Seen:
    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / FILE
        self.runs: list[np.ndarray] = []  # sorted, distinct, sizes roughly halving
        self.log: list[np.ndarray] = []  # digests in input order, not yet in the file
        self.count = 0  # digests in the set
        self.persisted = 0  # of which in the file

    def _contains(self, d: np.ndarray) -> np.ndarray:
        found = np.zeros(len(d), dtype=bool)
        for run in self.runs:
            i = np.searchsorted(run, d)
            found |= run[np.minimum(i, len(run) - 1)] == d
        return found

    def _add(self, d: np.ndarray) -> None:
        """Add distinct digests, none in the set yet, in input order."""
        if not len(d):
            return
        self.log.append(d)
        self.runs.append(np.sort(d))
        self.count += len(d)
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            b, a = self.runs.pop(), self.runs.pop()
            self.runs.append(np.sort(np.concatenate([a, b]), kind="stable"))

    def mark(self, enc: Encoded) -> Encoded:
        """The encoding with this batch's duplicates marked (their tokens dropped); the
        others' digests join the set."""
        rows = np.flatnonzero(np.isin(enc.status, _CANDIDATES))
        d = enc.digest[rows]
        _, first = np.unique(d, return_index=True)
        fresh = np.zeros(len(rows), dtype=bool)
        fresh[first] = True  # the first of each digest within the batch ...
        fresh &= ~self._contains(d)  # ... that no earlier batch had
        self._add(d[fresh])
        dup = rows[~fresh]
        return drop_rows(enc, dup) if len(dup) else enc

    def persist(self) -> None:
        """Make every digest so far durable (each manifest records their count)."""
        if self.count > self.persisted:
            pending = np.concatenate(self.log)
            append_items(self.path, pending.astype(DTYPE), self.persisted)
            self.log, self.persisted = [], self.count

    def restore(self, count: int) -> None:
        """The set of a resumed run: the first `count` digests of the file."""
        if count:
            d = load_items(self.path, DTYPE, count).astype(np.uint64)
            self.runs, self.count = [np.sort(d)], count
        self.persisted = count

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def drop_rows(enc: Encoded, rows: np.ndarray) -> Encoded:
    """`enc` with `rows` marked duplicate: status, token count and tokens removed."""
    status, ntok = enc.status.copy(), enc.ntok.copy()
    gone = np.zeros(len(status), dtype=bool)
    gone[rows] = True
    tokens = []
    for s in range(2):
        mine = enc.split == s
        lengths = np.where(mine & (enc.ntok > 0), enc.ntok, 0)[mine]  # this split's rows
        keep = np.repeat(~gone[mine], lengths)
        tokens.append(enc.tokens[s][keep])
    status[rows] = _DUPLICATE
    ntok[rows] = 0
    return Encoded(
        status, enc.replaced, enc.nbytes, enc.split, ntok, (tokens[0], tokens[1]), enc.digest
    )
