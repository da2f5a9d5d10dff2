"""Parquet files of source code, in any schema: the columns come from the `*_column` keys.

Reads only the columns the record needs (text, repository, path and language, each
where the file has it), one row group at a time, in batches bounded by BYTES rather
than rows: a row group's uncompressed size of those columns divided by its row count
gives bytes per row, and a batch holds about `batch_bytes` of them. (A fixed 8192-row
batch can be a whole 98 MB file of minified code and ~1 GB of memory per process.)

A file without the repository column gives each row the file's name as its repository
(so the whole file goes to one split); one without the language column takes the
language from the path column's extension (languages.py), or `unknown`.

Text leaves this module as raw UTF-8 bytes plus offsets (`BinaryColumn`), not
as Python strings: a `string` column may hold invalid UTF-8 (pyarrow then
raises on `to_pylist`), and a `binary` column is allowed too, so the worker
decodes each document itself, with replacement, and counts the replacements.

Errors: every schema problem is checked when a file is opened, before any
batch is read (`iter_batches(columns=[...])` on a file without the column
silently yields batches with no columns). A corrupt page fails only when its
row group is read, after earlier row groups succeeded, and a truncated file
fails when it is opened; both become a `FileError` item in the stream at the
point where they happened (source.py says what the consumer does with it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model.errors import InputError
from pipeline.corpus import languages as langlib
from pipeline.corpus.batches import (
    UNKNOWN_LANGUAGE,
    Batch,
    BatchInfo,
    BinaryColumn,
    Reading,
    Unreadable,
)

# Errors pyarrow raises on unreadable files: OSError (IOError), ArrowInvalid
# (a ValueError), ArrowException and friends.
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, pa.ArrowException)
READ_BUFFER = 1 << 20


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


def _has(pf: pq.ParquetFile, column: str) -> bool:
    schema = pf.schema_arrow
    return column in schema.names and _is_text_type(schema.field(column).type)


def columns_for(pf: pq.ParquetFile, how: Reading) -> list[str]:
    """The record's columns this file has: text first, then repository, path, language."""
    c = how.columns
    found = [c.text, *(col for col in (c.repo, c.path, c.language) if _has(pf, col))]
    return list(dict.fromkeys(found))  # one column may be two parts (text_column=path)


def open_checked(path: Path, how: Reading) -> pq.ParquetFile:
    """Open a file and check its schema; OSError/ArrowException for unreadable files."""
    # A buffered stream reads a column chunk a page at a time rather than whole: measured
    # on one 250 MB row group, pyarrow's peak falls from 89 to 40 MB at the same speed.
    pf = pq.ParquetFile(path, buffer_size=READ_BUFFER, pre_buffer=False)
    schema = pf.schema_arrow
    names = schema.names
    c = how.columns
    if c.text not in names:
        pf.close()
        raise InputError(
            f"{path}: no column {c.text!r} (columns: {', '.join(names)}); "
            "set text_column= to the column that holds the code (or schema=the-stack)"
        )
    for col, key in ((c.text, "text_column"), (c.repo, "repo_column")):
        if col in names and not _is_text_type(schema.field(col).type):
            pf.close()
            raise InputError(
                f"{path}: column {col!r} has type {schema.field(col).type}, "
                f"not string or binary; set {key}= to a string column"
            )
    if how.languages and not (_has(pf, c.language) or _has(pf, c.path)):
        pf.close()
        raise InputError(
            f"{path}: no string column {c.language!r} or {c.path!r} (columns: "
            f"{', '.join(names)}), but languages= is set; set language_column= or "
            "path_column=, or languages=[] to keep every document"
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


def _languages(rb: pa.RecordBatch, col: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Per-row codes into this batch's language names; a null is `unknown`."""
    enc = pc.dictionary_encode(rb.column(col).cast(pa.large_binary()))  # nulls stay null
    names = [v.decode("utf-8", errors="replace") for v in enc.dictionary.to_pylist()]
    codes = enc.indices.fill_null(len(names)).to_numpy(zero_copy_only=False)
    return codes.astype(np.int32), (*names, UNKNOWN_LANGUAGE)


def _batch(rb: pa.RecordBatch, at: tuple[int, int, int, int], how: Reading, name: bytes) -> Batch:
    """at: (file index, row group, row in the group, row in the file); name: the file's."""
    c, cols, n = how.columns, rb.schema.names, rb.num_rows
    path = binary_column(rb.column(c.path)) if c.path in cols else None
    keep = None
    if c.language in cols:
        if how.languages:
            lang = rb.column(c.language).cast(pa.large_binary())
            wanted = pa.array([s.encode() for s in how.languages], type=pa.large_binary())
            keep = pc.is_in(lang, value_set=wanted).to_numpy(zero_copy_only=False).astype(bool)
        codes, names = _languages(rb, c.language)
    elif path is not None:
        values = langlib.from_paths([None if path.null[i] else path.value(i) for i in range(n)])
        codes, names, keep = langlib.codes_of(values, how.languages)
    else:
        codes, names = np.zeros(n, dtype=np.int32), (UNKNOWN_LANGUAGE,)
    repo = binary_column(rb.column(c.repo)) if c.repo in cols else BinaryColumn.of([name] * n)
    info = BatchInfo(at[0], at[1], at[2], at[3], codes, names)
    return Batch(info, binary_column(rb.column(c.text)), repo, keep, path=path)


def read(
    path: Path,
    file_index: int,
    how: Reading,
    batch_bytes: int,
    start: tuple[int, int],
    groups: int | None,
) -> Iterator[Batch]:
    """Batches of one file from (row group, row) = start (at most `groups` row groups).

    Raises READ_ERRORS (with the row group reached as `.group`) where reading fails."""
    pf = open_checked(path, how)
    cols = columns_for(pf, how)
    md = pf.metadata
    first = sum(md.row_group(g).num_rows for g in range(start[0]))  # the group's first row
    last = md.num_row_groups if groups is None else min(md.num_row_groups, start[0] + groups)
    group = start[0]
    try:
        for group in range(start[0], last):
            skip = start[1] if group == start[0] else 0
            row = 0
            n = batch_rows(pf, group, cols, batch_bytes)
            for rb in pf.iter_batches(batch_size=n, row_groups=[group], columns=cols):
                rb = rb.select(cols)  # iter_batches names the columns in file order
                if row + rb.num_rows <= skip:
                    row += rb.num_rows
                    continue
                if row < skip:
                    rb = rb.slice(skip - row)
                    row = skip
                yield _batch(rb, (file_index, group, row, first + row), how, path.name.encode())
                row += rb.num_rows
            first += md.row_group(group).num_rows
    except READ_ERRORS as e:
        left = sum(md.row_group(g).num_rows for g in range(group, md.num_row_groups))
        raise Unreadable(group, left, e) from None
    finally:
        pf.close()
