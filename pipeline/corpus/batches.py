"""What travels between the parquet reader, the worker processes and the shard writer.

The reader (source.py) turns rows into a `Batch` of raw UTF-8 bytes plus
offsets, or a `FileError` where a file stopped being readable; a worker
(worker.py) turns a Batch into an `Encoded`: compact numpy arrays, never
Python lists of tokens, so the result is cheap to send back and the writer
(writer.py) only copies it into its shard buffers. `Position` is where a
resumed run starts reading. Only numpy here: workers import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


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
class BatchInfo:
    """Which rows a batch is, and its small per-row columns: all the main process needs."""

    file_index: int
    row_group: int
    row: int  # the first row, within the row group
    file_row: int  # the same row, within the whole file
    lang: np.ndarray  # (n,) int32: index into lang_names of each row's `language` value
    lang_names: tuple[str, ...]  # the batch's language values; a null or absent one is unknown

    @property
    def num_rows(self) -> int:
        return len(self.lang)


@dataclass(frozen=True)
class Batch:
    """Rows [row, row + num_rows) of one row group of input file `file_index`, with their text
    (what a worker works on)."""

    info: BatchInfo
    text: BinaryColumn
    repo: BinaryColumn
    keep: np.ndarray | None  # (n,) bool: passes the language filter; None = no filter
    near_dup: np.ndarray | None = None  # (n,) bool: dropped by the dedup stage's decision

    @property
    def num_rows(self) -> int:
        return len(self.text)

    @property
    def file_index(self) -> int:
        return self.info.file_index

    @property
    def row_group(self) -> int:
        return self.info.row_group

    @property
    def row(self) -> int:
        return self.info.row

    @property
    def file_row(self) -> int:
        return self.info.file_row

    @property
    def lang(self) -> np.ndarray:
        return self.info.lang

    @property
    def lang_names(self) -> tuple[str, ...]:
        return self.info.lang_names


@dataclass(frozen=True)
class Rules:
    """What a worker skips, and whether it computes the exact-dedup digest (docs/tokenize.md).

    A limit of 0 (or False) turns that rule off.
    """

    max_doc_bytes: int = 1_000_000
    max_line_chars: int = 1000
    max_mean_line_chars: int = 100
    min_alnum_fraction: float = 0.25
    drop_generated: bool = True
    digest: bool = True  # dedup: exact


@dataclass(frozen=True)
class FileError:
    """Reading `file_index` failed at `row_group`; rows from there on were not read."""

    file_index: int
    path: str
    row_group: int
    rows_not_read: int | None  # None: the footer was unreadable, so the count is unknown
    message: str


# Row status, in the order the rules are applied; index 0 is a tokenized document, the
# rest are skip reasons. A worker decides all but `duplicate`, which the writer decides in
# input order (writer.py); its input is every row that passed the rules before it.
STATUS = (
    "tokenized",
    "null",
    "empty",
    "language",
    "too_large",
    "near_duplicate",
    "long_line",
    "mean_line",
    "alnum",
    "generated",
    "duplicate",
    "tokenizer_error",
)
SKIP_REASONS = STATUS[1:]
TRAIN, VAL = 0, 1
UNKNOWN_LANGUAGE = "unknown"


@dataclass(frozen=True)
class Encoded:
    status: np.ndarray  # (n,) int8, index into STATUS
    replaced: np.ndarray  # (n,) bool: invalid UTF-8 decoded with U+FFFD
    nbytes: np.ndarray  # (n,) int64: text bytes of the row (0 for null)
    split: np.ndarray  # (n,) uint8: TRAIN or VAL
    ntok: np.ndarray  # (n,) int64: tokens of the row incl. its EOT, 0 when skipped
    tokens: tuple[np.ndarray, np.ndarray]  # per split: (sum of its rows' ntok,) uint16
    digest: np.ndarray  # (n,) uint64: exact-dedup hash of rows that passed the rules, else 0


class Position(NamedTuple):
    """Where a run resumes: the document that supplied the last token in a shard."""

    file_index: int = 0
    row_group: int = 0
    row: int = 0
    token_offset: int = 0  # tokens of that document already in a shard
