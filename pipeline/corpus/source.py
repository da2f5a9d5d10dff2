"""Streaming reader of parquet files of source code (the github-code schema).

Reads only the columns the tokenize stage needs (the text column, `repo_name`
and, when a language filter is set, `language`), one row group at a time, in
batches bounded by BYTES rather than rows: a row group's uncompressed size of
those columns divided by its row count gives bytes per row, and a batch holds
about `batch_bytes` of them. (A fixed 8192-row batch can be a whole 98 MB file
of minified code and ~1 GB of memory per process.)

Text leaves this module as raw UTF-8 bytes plus offsets (`BinaryColumn`), not
as Python strings: a `string` column may hold invalid UTF-8 (pyarrow then
raises on `to_pylist`), and a `binary` column is allowed too, so the worker
decodes each document itself, with replacement, and counts the replacements.

Errors: every schema problem is checked when a file is opened, before any
batch is read (`iter_batches(columns=[...])` on a file without the column
silently yields batches with no columns). A corrupt page fails only when its
row group is read, after earlier row groups succeeded, and a truncated file
fails when it is opened; both become a `FileError` item in the stream at the
point where they happened, so the consumer can stop (`on_error=fail`) or
record the file and go on (`on_error=skip`) in input order.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model.errors import InputError
from pipeline.corpus.batches import (
    UNKNOWN_LANGUAGE,
    Batch,
    BatchInfo,
    BinaryColumn,
    FileError,
)

REPO_COLUMN = "repo_name"
LANGUAGE_COLUMN = "language"
# Errors pyarrow raises on unreadable files: OSError (IOError), ArrowInvalid
# (a ValueError), ArrowException and friends.
log = logging.getLogger(__name__)
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, pa.ArrowException)


def _is_text_type(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def binary_column(arr: pa.Array | pa.ChunkedArray) -> BinaryColumn:
    """Copy any string/binary array into compact buffers without decoding it.

    Casting string -> large_binary does not validate UTF-8, so invalid bytes
    pass through untouched. The copy also cuts a slice loose from the whole
    decoded page it may point into, so pickling it to a worker sends only its
    own bytes.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = pa.concat_arrays(arr.chunks) if arr.num_chunks != 1 else arr.chunk(0)
    b = arr.cast(pa.large_binary())
    n = len(b)
    raw = np.frombuffer(b.buffers()[1], dtype=np.int64)[b.offset : b.offset + n + 1]
    start, end = (int(raw[0]), int(raw[-1])) if n else (0, 0)
    data_buf = b.buffers()[2]
    data = data_buf[start:end].to_pybytes() if data_buf is not None and n else b""
    null = b.is_null().to_numpy(zero_copy_only=False).astype(bool, copy=False)
    return BinaryColumn(offsets=(raw - start).astype(np.int64), data=data, null=null)


@dataclass(frozen=True)
class FileInfo:
    text_bytes: int  # uncompressed bytes of the text column (for the ETA)
    rows: int
    groups: list[tuple[int, int]]  # per row group: rows, uncompressed bytes of the text column


def file_error_text(path: str, msg: str) -> str:
    msg = " ".join(msg.split())[:200]
    return (
        f"{path}: not a readable parquet file ({msg}); replace or delete it, "
        "or pass on_error=skip to skip it (recorded in the output's state)"
    )


def survey(
    files: list[Path], text_column: str, languages: list[str], on_error: str
) -> list[FileInfo | str]:
    """Open every footer before any work, so schema errors come first; for a file that
    cannot be read and will be skipped (on_error=skip) its one-line error, else an
    InputError."""
    out: list[FileInfo | str] = []
    for f in files:
        try:
            pf = open_checked(f, text_column, languages)
        except READ_ERRORS as e:
            if on_error != "skip":
                raise InputError(file_error_text(str(f), str(e))) from None
            log.warning("%s: unreadable, will be skipped (%s)", f, e)
            out.append(_one_line(e))
            continue
        with pf:
            groups = group_sizes(pf, text_column)
            out.append(FileInfo(sum(b for _, b in groups), pf.metadata.num_rows, groups))
    return out


def list_inputs(spec: str) -> list[Path]:
    """`spec` is a folder (its *.parquet files) or a glob; the files, sorted by path."""
    p = Path(spec)
    if p.is_dir():
        files = sorted(q for q in p.glob("*.parquet") if q.is_file())
        if not files:
            others = sorted(q.name for q in p.iterdir())[:3]
            what = f"it holds {', '.join(others)}..." if others else "it is empty"
            raise InputError(
                f"input {spec}: no *.parquet files ({what}); point input= at a folder of "
                "parquet files, or run `make sample-data` for the built-in sample"
            )
        return files
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(spec) if os.path.isfile(f))
        if not files:
            raise InputError(f"input {spec}: the glob matches no files; fix input=")
        return files
    if p.is_file():
        return [p]
    raise InputError(
        f"input {spec}: no such folder or file; set input= to a folder of parquet files "
        "(e.g. input=data/sample after `make sample-data`)"
    )


def has_language(pf: pq.ParquetFile) -> bool:
    """The file has a string `language` column (the per-language accounting reads it)."""
    schema = pf.schema_arrow
    return LANGUAGE_COLUMN in schema.names and _is_text_type(schema.field(LANGUAGE_COLUMN).type)


def columns_for(text_column: str, with_language: bool) -> list[str]:
    cols = [text_column, REPO_COLUMN]
    if with_language:
        cols.append(LANGUAGE_COLUMN)
    return cols


READ_BUFFER = 1 << 20


def open_checked(path: Path, text_column: str, languages: list[str]) -> pq.ParquetFile:
    """Open a file and check its schema; OSError/ArrowException for unreadable files."""
    # A buffered stream reads a column chunk a page at a time rather than whole: measured
    # on one 250 MB row group, pyarrow's peak falls from 89 to 40 MB at the same speed.
    pf = pq.ParquetFile(path, buffer_size=READ_BUFFER, pre_buffer=False)
    schema = pf.schema_arrow
    names = schema.names
    if text_column not in names:
        raise InputError(
            f"{path}: no column {text_column!r} (columns: {', '.join(names)}); "
            "set text_column= to the column that holds the code"
        )
    if not _is_text_type(schema.field(text_column).type):
        raise InputError(
            f"{path}: column {text_column!r} has type {schema.field(text_column).type}, "
            "not string or binary; set text_column= to the column that holds the code"
        )
    for col, why in ((REPO_COLUMN, "the train/val split hashes it"),):
        if col not in names or not _is_text_type(schema.field(col).type):
            raise InputError(
                f"{path}: no string column {col!r} ({why}; columns: {', '.join(names)}); "
                "use parquet files in the github-code schema"
            )
    if languages and (
        LANGUAGE_COLUMN not in names or not _is_text_type(schema.field(LANGUAGE_COLUMN).type)
    ):
        raise InputError(
            f"{path}: no string column {LANGUAGE_COLUMN!r} (columns: {', '.join(names)}), "
            "but languages= is set; set languages=[] to keep every document"
        )
    return pf


def group_sizes(pf: pq.ParquetFile, text_column: str) -> list[tuple[int, int]]:
    """Per row group (rows, uncompressed bytes of the text column), from the footer."""
    md = pf.metadata
    cols = [i for i in range(md.num_columns) if md.schema.column(i).path == text_column]
    out = []
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        out.append((rg.num_rows, rg.column(cols[0]).total_uncompressed_size if cols else 0))
    return out


def batch_rows(pf: pq.ParquetFile, group: int, columns: list[str], batch_bytes: int) -> int:
    """Rows per batch in `group` so that a batch holds about batch_bytes of `columns`."""
    rg = pf.metadata.row_group(group)
    if rg.num_rows == 0:
        return 1
    wanted = set(columns)
    size = sum(
        rg.column(i).total_uncompressed_size
        for i in range(rg.num_columns)
        if rg.column(i).path_in_schema.split(".")[0] in wanted
    )
    per_row = max(1.0, size / rg.num_rows)
    return int(max(1, min(rg.num_rows, batch_bytes // per_row)))


def _languages(rb: pa.RecordBatch, cols: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Per-row codes into this batch's language names; null or no column is `unknown`."""
    if LANGUAGE_COLUMN not in cols:
        return np.zeros(rb.num_rows, dtype=np.int32), (UNKNOWN_LANGUAGE,)
    col = rb.column(cols.index(LANGUAGE_COLUMN)).cast(pa.large_binary())
    enc = pc.dictionary_encode(col)  # nulls stay null in the indices
    names = [v.decode("utf-8", errors="replace") for v in enc.dictionary.to_pylist()]
    codes = enc.indices.fill_null(len(names)).to_numpy(zero_copy_only=False)
    return codes.astype(np.int32), (*names, UNKNOWN_LANGUAGE)


def _batch(
    rb: pa.RecordBatch, at: tuple[int, int, int, int], cols: list[str], langs: list[str]
) -> Batch:
    """at: (file index, row group, row in the group, row in the file)."""
    keep = None
    if langs:
        lang = rb.column(cols.index(LANGUAGE_COLUMN)).cast(pa.large_binary())
        wanted = pa.array([s.encode() for s in langs], type=pa.large_binary())
        keep = pc.is_in(lang, value_set=wanted).to_numpy(zero_copy_only=False).astype(bool)
    codes, names = _languages(rb, cols)
    info = BatchInfo(at[0], at[1], at[2], at[3], codes, names)
    return Batch(info, binary_column(rb.column(0)), binary_column(rb.column(1)), keep)


def read_file(
    path: Path,
    file_index: int,
    text_column: str,
    languages: list[str],
    batch_bytes: int,
    start: tuple[int, int] = (0, 0),
    groups: int | None = None,
) -> Iterator[Batch | FileError]:
    """Batches of one file from (row group, row) = start (at most `groups` row groups);
    ends with a FileError on failure."""
    group = start[0]
    try:
        pf = open_checked(path, text_column, languages)
    except READ_ERRORS as e:
        yield FileError(file_index, str(path), group, None, _one_line(e))
        return
    cols = columns_for(text_column, has_language(pf))
    md = pf.metadata
    first = sum(md.row_group(g).num_rows for g in range(start[0]))  # the group's first row
    last = md.num_row_groups if groups is None else min(md.num_row_groups, start[0] + groups)
    try:
        for group in range(start[0], last):
            skip = start[1] if group == start[0] else 0
            row = 0
            n = batch_rows(pf, group, cols, batch_bytes)
            for rb in pf.iter_batches(batch_size=n, row_groups=[group], columns=cols):
                # iter_batches names the columns in file order; put them in ours.
                rb = rb.select(cols)
                if row + rb.num_rows <= skip:
                    row += rb.num_rows
                    continue
                if row < skip:
                    rb = rb.slice(skip - row)
                    row = skip
                yield _batch(rb, (file_index, group, row, first + row), cols, languages)
                row += rb.num_rows
            first += md.row_group(group).num_rows
    except READ_ERRORS as e:
        left = sum(md.row_group(g).num_rows for g in range(group, md.num_row_groups))
        yield FileError(file_index, str(path), group, left, _one_line(e))
    finally:
        pf.close()


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]
