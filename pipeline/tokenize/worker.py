"""What one tokenize worker process does with one batch: decode, filter, split, encode.

Nothing here imports pyarrow: a worker holds only numpy, tiktoken and its
batch (about 60 MB instead of 95 MB per process). What it takes and returns
(raw UTF-8 bytes plus offsets in; compact numpy arrays, never Python lists of
tokens, out) is defined in batches.py.
"""

from __future__ import annotations

import hashlib

import numpy as np

from model import tokenizer
from pipeline.corpus import rules as _rules
from pipeline.corpus.batches import STATUS, TRAIN, VAL, Batch, Encoded, Rules
from pipeline.corpus.lifeline import exit_with
from pipeline.corpus.rules import status_of

_NO_SPECIAL: frozenset[str] = frozenset()  # `<|endoftext|>` in code is plain text
_TOKENIZER_ERROR = STATUS.index("tokenizer_error")


def split_threshold(val_fraction: float) -> int:
    """Hashes below this go to val: a fraction val_fraction of the 64-bit range."""
    return round(val_fraction * 2**64)


def split_of(repo: bytes, threshold: int) -> int:
    """Stable across processes and runs (unlike hash()): blake2b of the repo name."""
    h = int.from_bytes(hashlib.blake2b(repo, digest_size=8).digest(), "big")
    return VAL if h < threshold else TRAIN


def encode_doc(text: str, tok: tokenizer.Tokenizer) -> np.ndarray | None:
    """ids + EOT as uint16, or None when the tokenizer fails on this document.

    tiktoken's regex runs out of backtracking stack on ~1 M whitespace
    characters: `encode_to_numpy` raises ValueError and `encode_ordinary`
    panics in Rust (pyo3_runtime.PanicException, a BaseException). Either way
    this one document is counted as a tokenizer_error, and the batch goes on.
    """
    enc = tok.encoding
    try:
        ids = enc.encode_to_numpy(text, allowed_special=_NO_SPECIAL, disallowed_special=())
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException:
        return None
    out = np.empty(len(ids) + 1, dtype=np.uint16)
    out[:-1] = ids  # ids < 50281 fit uint16
    out[-1] = tok.eot
    return out


def encode_batch(batch: Batch, rules: Rules, threshold: int, name: str) -> Encoded:
    """Apply the rules to each row in STATUS order, then encode what passes with the
    tokenizer called `name`."""
    tok = tokenizer.get(name)
    n = batch.num_rows
    status = np.zeros(n, dtype=np.int8)
    replaced = np.zeros(n, dtype=bool)
    nbytes = np.diff(batch.text.offsets).astype(np.int64)
    split = np.zeros(n, dtype=np.uint8)
    ntok = np.zeros(n, dtype=np.int64)
    digest = np.zeros(n, dtype=np.uint64)
    parts: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for i in range(n):
        status[i], raw, text, replaced[i] = status_of(batch, i, int(nbytes[i]), rules)
        if status[i]:
            continue
        if rules.digest:
            digest[i] = _rules.digest(raw)
        ids = encode_doc(text, tok)
        if ids is None:
            status[i] = _TOKENIZER_ERROR
            continue
        split[i] = split_of(batch.repo.value(i), threshold)
        ntok[i] = len(ids)
        parts[split[i]].append(ids)
    tokens = tuple(np.concatenate(p) if p else np.empty(0, dtype=np.uint16) for p in parts)
    return Encoded(status, replaced, nbytes, split, ntok, (tokens[0], tokens[1]), digest)


def warm_up(main_pid: int, name: str) -> None:
    """Pool initializer: build the encoding once, and exit when the main process dies
    (main_pid 0: no pool, nothing to watch; lifeline.py says why a worker watches).
    """
    tokenizer.get(name)
    if main_pid:
        exit_with(main_pid)
