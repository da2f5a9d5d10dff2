"""What one tokenize worker process does with one batch: decode, filter, split, encode.

Nothing here imports pyarrow: a worker holds only numpy, tiktoken and its
batch (about 60 MB instead of 95 MB per process). `Batch` is what the reader
(pipeline.parquet_source) hands over: raw UTF-8 bytes plus offsets.

It returns compact numpy arrays (per row: status, replacement flag, text bytes,
split, token count; per split: all the batch's tokens as one uint16 array),
never Python lists of tokens, so the result is cheap to send back and the
main process only copies it into its shard buffers.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil

from pipeline import tokenizer


@dataclass(frozen=True)
class BinaryColumn:
    """n values as one bytes object: value i is data[offsets[i]:offsets[i + 1]]."""

    offsets: np.ndarray  # (n + 1,) int64, offsets[0] == 0
    data: bytes
    null: np.ndarray  # (n,) bool

    def __len__(self) -> int:
        return len(self.null)

    def value(self, i: int) -> bytes:
        return self.data[self.offsets[i] : self.offsets[i + 1]]


@dataclass(frozen=True)
class Batch:
    """Rows [row, row + num_rows) of one row group of input file `file_index`."""

    file_index: int
    row_group: int
    row: int
    text: BinaryColumn
    repo: BinaryColumn
    keep: np.ndarray | None  # (n,) bool: passes the language filter; None = no filter

    @property
    def num_rows(self) -> int:
        return len(self.text)


# Row status; index 0 is a tokenized document, the rest are skip reasons.
STATUS = ("tokenized", "null", "empty", "language", "too_large", "tokenizer_error")
SKIP_REASONS = STATUS[1:]
TRAIN, VAL = 0, 1
_NO_SPECIAL: frozenset[str] = frozenset()  # `<|endoftext|>` in code is plain text


@dataclass(frozen=True)
class Encoded:
    status: np.ndarray  # (n,) int8, index into STATUS
    replaced: np.ndarray  # (n,) bool: invalid UTF-8 decoded with U+FFFD
    nbytes: np.ndarray  # (n,) int64: text bytes of the row (0 for null)
    split: np.ndarray  # (n,) uint8: TRAIN or VAL
    ntok: np.ndarray  # (n,) int64: tokens of the row incl. its EOT, 0 when skipped
    tokens: tuple[np.ndarray, np.ndarray]  # per split: (sum of its rows' ntok,) uint16


def split_threshold(val_fraction: float) -> int:
    """Hashes below this go to val: a fraction val_fraction of the 64-bit range."""
    return round(val_fraction * 2**64)


def split_of(repo: bytes, threshold: int) -> int:
    """Stable across processes and runs (unlike hash()): blake2b of the repo name."""
    h = int.from_bytes(hashlib.blake2b(repo, digest_size=8).digest(), "big")
    return VAL if h < threshold else TRAIN


def decode(raw: bytes) -> tuple[str, bool]:
    """UTF-8 text; invalid bytes (lone surrogates included) become U+FFFD, flagged."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def encode_doc(text: str) -> np.ndarray | None:
    """ids + EOT as uint16, or None when the tokenizer fails on this document.

    tiktoken's regex runs out of backtracking stack on ~1 M whitespace
    characters: `encode_to_numpy` raises ValueError and `encode_ordinary`
    panics in Rust (pyo3_runtime.PanicException, a BaseException). Either way
    this one document is counted as a tokenizer_error, and the batch goes on.
    """
    enc = tokenizer.get_encoding()
    try:
        ids = enc.encode_to_numpy(text, allowed_special=_NO_SPECIAL, disallowed_special=())
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException:
        return None
    out = np.empty(len(ids) + 1, dtype=np.uint16)
    out[:-1] = ids  # GPT-2 ids < 50257 fit uint16
    out[-1] = tokenizer.EOT
    return out


def encode_batch(batch: Batch, max_doc_bytes: int, threshold: int) -> Encoded:
    n = batch.num_rows
    status = np.zeros(n, dtype=np.int8)
    replaced = np.zeros(n, dtype=bool)
    nbytes = np.diff(batch.text.offsets).astype(np.int64)
    split = np.zeros(n, dtype=np.uint8)
    ntok = np.zeros(n, dtype=np.int64)
    parts: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for i in range(n):
        if batch.text.null[i]:
            status[i] = STATUS.index("null")
        elif nbytes[i] == 0:
            status[i] = STATUS.index("empty")
        elif batch.keep is not None and not batch.keep[i]:
            status[i] = STATUS.index("language")
        elif nbytes[i] > max_doc_bytes:
            status[i] = STATUS.index("too_large")
        else:
            text, replaced[i] = decode(batch.text.value(i))
            ids = encode_doc(text)
            if ids is None:
                status[i] = STATUS.index("tokenizer_error")
                continue
            split[i] = split_of(batch.repo.value(i), threshold)
            ntok[i] = len(ids)
            parts[split[i]].append(ids)
    tokens = tuple(np.concatenate(p) if p else np.empty(0, dtype=np.uint16) for p in parts)
    return Encoded(status, replaced, nbytes, split, ntok, (tokens[0], tokens[1]))


def warm_up(main_pid: int) -> None:
    """Pool initializer: build the encoding once, and exit when the main process dies.

    A SIGKILLed main process cannot stop its workers. A worker blocked on the
    task queue would then wait for ever (it holds the queue's write end
    itself), and so would the forkserver (each worker holds the pipe whose
    end tells it that the main process is gone), keeping the main process's
    stdout open. So each worker polls the main process itself.
    """
    tokenizer.get_encoding()
    threading.Thread(target=_exit_with, args=(main_pid,), daemon=True).start()


def _exit_with(main_pid: int) -> None:
    # psutil, not os.kill(pid, 0): a killed main process stays a zombie until
    # its parent reaps it, and that parent may be waiting for our stdout to close.
    try:
        main = psutil.Process(main_pid)
        while main.is_running() and main.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.5)
    except psutil.Error:
        pass
    os._exit(1)
