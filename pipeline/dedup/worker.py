"""What one dedup worker does with one batch: the tokenize rules, then each document's band keys.

Only numpy here (and the rules): a worker never imports pyarrow or tiktoken.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from pipeline.corpus.batches import Batch, Rules
from pipeline.corpus.lifeline import exit_with
from pipeline.corpus.rules import status_of
from pipeline.dedup.minhash import MinHasher, Params


@dataclass(frozen=True)
class Signed:
    status: np.ndarray  # (n,) int8: STATUS index of each row (0: it passed every rule)
    rows: np.ndarray  # (k,) int64: the rows (within the batch) that got a signature
    keys: np.ndarray  # (k, bands) uint64: their LSH band keys
    nbytes: int  # text bytes of the batch


@functools.cache
def _hasher(params: Params) -> MinHasher:
    return MinHasher(params)


def sign_batch(batch: Batch, rules: Rules, params: Params) -> Signed:
    hasher = _hasher(params)
    n = batch.num_rows
    status = np.zeros(n, dtype=np.int8)
    nbytes = np.diff(batch.text.offsets)
    rows: list[int] = []
    keys: list[np.ndarray] = []
    for i in range(n):
        status[i], raw, _text, _replaced = status_of(batch, i, int(nbytes[i]), rules)
        if status[i]:
            continue
        sig = hasher.signature(raw)
        if sig is not None:
            rows.append(i)
            keys.append(hasher.band_keys(sig))
    stacked = np.stack(keys) if keys else np.empty((0, params.bands), dtype=np.uint64)
    return Signed(status, np.array(rows, dtype=np.int64), stacked, int(nbytes.sum()))


def warm_up(main_pid: int) -> None:
    """Pool initializer: exit when the main process dies (pipeline/corpus/lifeline.py)."""
    if main_pid:
        exit_with(main_pid)
