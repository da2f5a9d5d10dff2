"""The reading layer: every source the data stages read, as one stream of records.

A record is (text, repository, path, language, size), carried columnar in a `Batch`
(batches.py). The sources, by `schema` and by file suffix:

| input | schema | read by |
| --- | --- | --- |
| `*.parquet` files (a folder of them, a glob, or one file) | `github-code` (default), `the-stack`, or any other through the `*_column` keys | parquet.py |
| `*.jsonl`, `*.jsonl.gz`, `*.jsonl.zst` files (the same ways) | the same, for the objects' keys | jsonl.py |
| a folder of source files (`input=~/src`) | `files` | files.py |

Every source is cut the same way, into inputs, their row groups and rows (a folder is
one input whose rows are its files, in runs of files as row groups), so the
pool (pool.py), the resume position (file, row group, row) and the near-dedup row ids
(file << 40 | row) mean the same for all of them. Survey first (`survey`: footers,
or one pass over a JSON Lines file, or a stat), so a schema error comes before any
work; then `read_file` yields a file's batches, in row order, and a `FileError` item
where it stopped being readable, so the consumer can stop (`on_error=fail`) or record
the file and go on (`on_error=skip`) in input order.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from model.errors import InputError
from pipeline.corpus import files as folder
from pipeline.corpus import jsonl, parquet
from pipeline.corpus.batches import Batch, FileError, Reading, Unreadable
from pipeline.corpus.files import Listing

log = logging.getLogger(__name__)
TABLE_SUFFIXES = (".parquet", *jsonl.SUFFIXES)
READ_ERRORS = (*parquet.READ_ERRORS, *jsonl.READ_ERRORS)


@dataclass(frozen=True)
class FileInfo:
    text_bytes: int  # uncompressed bytes of the text (for the ETA)
    rows: int
    groups: list[tuple[int, int]]  # per row group: rows, uncompressed bytes of the text
    members: list[tuple[str, ...]] | None = None  # a folder's: per row group, its files


def kind_of(path: Path, how: Reading) -> str:
    if how.schema == "files":
        return "file"
    return "jsonl" if path.name.endswith(jsonl.SUFFIXES) else "parquet"


def file_error_text(path: str, msg: str) -> str:
    msg = " ".join(msg.split())[:200]
    what = "JSON Lines file" if path.endswith(jsonl.SUFFIXES) else "parquet file"
    if not path.endswith(TABLE_SUFFIXES):
        what = "file"
    return (
        f"{path}: not a readable {what} ({msg}); fix, replace or delete it, "
        "or pass on_error=skip to skip it (recorded in the output's state)"
    )


def list_inputs(spec: str, how: Reading) -> Listing:
    """`spec` is a folder, a glob or a file: the input files, sorted by path."""
    p = Path(spec).expanduser()
    if how.schema == "files":
        if not p.is_dir():
            raise InputError(
                f"input {spec}: not a folder; schema=files reads a folder of source files "
                "(input=~/src), or set schema= to read parquet or JSON Lines files"
            )
        listing = folder.walk(p)
        if not listing.inputs:
            raise InputError(f"input {spec}: no source files in it; point input= at a folder")
        return listing
    if p.is_dir():
        found = sorted(q for q in p.iterdir() if q.name.endswith(TABLE_SUFFIXES) and q.is_file())
        if not found:
            others = sorted(q.name for q in p.iterdir())[:3]
            what = f"it holds {', '.join(others)}..." if others else "it is empty"
            raise InputError(
                f"input {spec}: no *.parquet or *.jsonl[.gz|.zst] files ({what}); point "
                "input= at a folder of them, pass schema=files for a folder of source "
                "files, or run `make sample-data` for the built-in sample"
            )
        return Listing(found, found, {})
    if any(ch in spec for ch in "*?["):
        found = sorted(Path(f) for f in glob.glob(os.path.expanduser(spec)) if os.path.isfile(f))
        if not found:
            raise InputError(f"input {spec}: the glob matches no files; fix input=")
        return Listing(found, found, {})
    if p.is_file():
        return Listing([p], [p], {})
    raise InputError(
        f"input {spec}: no such folder or file; set input= to a folder of parquet or JSON "
        "Lines files (e.g. input=data/sample after `make sample-data`), or of source files "
        "with schema=files"
    )


def _layout(path: Path, how: Reading, members: list[Path]) -> FileInfo:
    kind = kind_of(path, how)
    if kind == "file":
        groups, names = folder.layout(path, members, how)
        return FileInfo(sum(b for _, b in groups), len(members), groups, names)
    if kind == "jsonl":
        groups = jsonl.survey(path, how)
    else:
        with parquet.open_checked(path, how) as pf:
            groups = parquet.group_sizes(pf, how.columns.text)
    return FileInfo(sum(b for _, b in groups), sum(r for r, _ in groups), groups)


def survey(
    files: list[Path], how: Reading, on_error: str, members: list[Path] | None = None
) -> list[FileInfo | str]:
    """Every file's row groups before any work, so schema errors come first; for a file
    that cannot be read and will be skipped (on_error=skip) its one-line error, else an
    InputError. `members`: a folder's files (Listing.inputs), for schema=files."""
    out: list[FileInfo | str] = []
    for f in files:
        try:
            out.append(_layout(f, how, members or []))
        except READ_ERRORS as e:
            if on_error != "skip":
                raise InputError(file_error_text(str(f), str(e))) from None
            log.warning("%s: unreadable, will be skipped (%s)", f, e)
            out.append(_one_line(e))
    return out


def read_file(
    path: Path,
    file_index: int,
    how: Reading,
    batch_bytes: int,
    start: tuple[int, int] = (0, 0),
    groups: int | None = None,
    group_row: int = 0,
    members: tuple[str, ...] = (),
) -> Iterator[Batch | FileError]:
    """Batches of one file from (row group, row) = start (at most `groups` row groups;
    group_row: the start group's first row in the file; a folder is read one group at a
    time, `members` its files); ends with a FileError on failure."""
    kind = kind_of(path, how)
    try:
        if kind == "file":
            yield from folder.read_group(
                path, file_index, how, batch_bytes, start, group_row, members
            )
        elif kind == "jsonl":
            yield from jsonl.read(path, file_index, how, batch_bytes, start, groups, group_row)
        else:
            yield from parquet.read(path, file_index, how, batch_bytes, start, groups)
    except Unreadable as e:
        yield FileError(file_index, str(path), e.group, e.left, _one_line(e.cause))
    except READ_ERRORS as e:  # the file did not open
        yield FileError(file_index, str(path), start[0], None, _one_line(e))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]
