"""What travels between the reading layer, the worker processes and a stage's writer.

The reading layer (source.py: parquet, JSON Lines, a folder of files) turns every
source's records (text, repository, path, language, size) into a `Batch` of raw
UTF-8 bytes plus offsets, or a `FileError` where a file stopped being readable; a worker
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

    @classmethod
    def of(cls, values: list[bytes | None]) -> BinaryColumn:
        """A column of these values (None is a null)."""
        sizes = np.fromiter((len(v) if v is not None else 0 for v in values), np.int64, len(values))
        offsets = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        data = b"".join(v for v in values if v is not None)
        return cls(offsets, data, np.array([v is None for v in values], dtype=bool))


@dataclass(frozen=True)
class Columns:
    """Where a table source (parquet, JSON Lines) keeps each part of the record."""

    text: str
    repo: str
    path: str
    language: str


# schema -> its columns (`files` is a folder of source files, and has none)
SCHEMAS: dict[str, Columns | None] = {
    "github-code": Columns("code", "repo_name", "path", "language"),
    "the-stack": Columns("content", "max_stars_repo_name", "max_stars_repo_path", "lang"),
    "files": None,
}


@dataclass(frozen=True)
class Reading:
    """How the input is read, as a worker needs it (the keys of SourceConfig it uses)."""

    schema: str = "github-code"
    columns: Columns = Columns("code", "repo_name", "path", "language")
    languages: tuple[str, ...] = ()  # keep only these; () keeps all
    max_doc_bytes: int = 1_000_000  # a folder's larger files are not read (too_large)
    root: str = ""  # schema files: the folder


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
    (what a worker works on): per row the record (text, repository, path, language, size:
    the text's length), columnar."""

    info: BatchInfo
    text: BinaryColumn
    repo: BinaryColumn
    keep: np.ndarray | None  # (n,) bool: passes the language filter; None = no filter
    near_dup: np.ndarray | None = None  # (n,) bool: dropped by the dedup stage's decision
    path: BinaryColumn | None = None  # the file's path in its repository, where the input has it
    # (n,) int8: a skip reason the reader decided (binary, too_large: a file it did not read)
    skip: np.ndarray | None = None

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


class Unreadable(Exception):
    """A reader's failure inside a file: at row group `group`, `left` rows not read (None:
    unknown); source.read_file turns it into a FileError in the stream."""

    def __init__(self, group: int, left: int | None, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.group, self.left, self.cause = group, left, cause


# Row status, in the order the rules are applied; index 0 is a tokenized document, the
# rest are skip reasons. `binary` (a NUL in a file's first 8 KB) and `unreadable` (a
# folder's file that could not be read) are the reader's, as is `too_large` for a
# folder's file it does not read. A worker decides all but `duplicate`, which the writer decides in
# input order (writer.py); its input is every row that passed the rules before it.
STATUS = (
    "tokenized",
    "null",
    "binary",
    "unreadable",
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
    """Where a run resumes: the first row of the batch after its last checkpoint (a row
    past its row group's end is the next row group's first)."""

    file_index: int = 0
    row_group: int = 0
    row: int = 0
