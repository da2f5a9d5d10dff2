"""JSON Lines files of source code (`.jsonl`, `.jsonl.gz`, `.jsonl.zst`): one object a line.

The record's parts are the object's keys named by the `*_column` keys (the schema's by
default), as for parquet: a line without the repository key takes the file's name, one
without the language key the language of its path's extension (languages.py). A blank
line is a row with no text (counted as `null`), so every line is accounted for.

Row groups: a file has no footer, so the survey reads it once and cuts it into spans of
GROUP_BYTES of (uncompressed) lines: group g holds the lines that start in bytes
[g * GROUP_BYTES, (g + 1) * GROUP_BYTES). A worker reaches group g of a plain file by a
seek; of a compressed one by decompressing from the start (gzip and zstd streams cannot
seek), so a compressed file of G groups costs about G / 2 decompressions of itself in
all: cheap next to the encoding up to some GB; past that, decompress it or use parquet.

A line that is not a JSON object, or whose text is not a string, stops that file with
one line naming the file and the line (or, with on_error=skip, skips the rest of it).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from model.errors import InputError
from pipeline.corpus import languages as langlib
from pipeline.corpus.batches import Batch, BatchInfo, BinaryColumn, Reading, Unreadable

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
GROUP_BYTES = 64 << 20
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, zstandard.ZstdError)
_CHUNK = 1 << 20


def open_stream(path: Path) -> IO[bytes]:
    """The file's lines as bytes, decompressed by its suffix."""
    name = path.name
    if name.endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    if name.endswith(".zst"):
        raw = open(path, "rb")  # noqa: SIM115 (closed with the reader: closefd)
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return io.BufferedReader(reader, _CHUNK)
    return open(path, "rb", buffering=_CHUNK)


def survey(path: Path, how: Reading, group_bytes: int = GROUP_BYTES) -> list[tuple[int, int]]:
    """Per group (rows, bytes of its lines); checks the first record's keys."""
    groups: list[list[int]] = []
    pos = 0
    checked = False
    with open_stream(path) as f:
        for line in f:
            g = pos // group_bytes
            while len(groups) <= g:
                groups.append([0, 0])
            groups[g][0] += 1
            groups[g][1] += len(line)
            pos += len(line)
            if not checked and line.strip():
                _check_first(path, line, how)
                checked = True
    return [(rows, nbytes) for rows, nbytes in groups]


def _check_first(path: Path, line: bytes, how: Reading) -> None:
    """The schema check a parquet footer allows: the first record has the text key."""
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise ValueError(f"line 1 is not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"line 1 is a JSON {type(obj).__name__}, not an object")
    if how.columns.text not in obj:
        keys = ", ".join(list(obj)[:12])
        raise InputError(
            f"{path}: the first record has no key {how.columns.text!r} (keys: {keys}); "
            "set text_column= to the key that holds the code (or schema=the-stack)"
        )


def _skip_to(f: IO[bytes], target: int, compressed: bool) -> int:
    """Move to the first line that starts at or after `target`; the new position."""
    if target == 0:
        return 0
    if compressed:
        left = target - 1
        while left:
            got = len(f.read(min(left, _CHUNK)))
            if not got:
                return target - 1 - left
            left -= got
    else:
        f.seek(target - 1)
    return target - 1 + len(f.readline())  # through the line that holds byte target - 1


def _text(value: Any, key: str, where: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: key {key!r} holds a {type(value).__name__}, not a string")
    return value.encode("utf-8", "surrogatepass")  # a lone surrogate: replaced by the worker


def parse(line: bytes, how: Reading, name: bytes, where: str) -> tuple[bytes | None, ...]:
    """One line's (text, repository, path, language); a blank line has none of them."""
    if not line.strip():
        return None, None, None, None
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise ValueError(f"{where} is not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is a JSON {type(obj).__name__}, not an object")
    c = how.columns
    text = _text(obj.get(c.text), c.text, where)
    repo = _text(obj.get(c.repo), c.repo, where) if c.repo in obj else name
    path = _text(obj.get(c.path), c.path, where)
    if c.language in obj:
        lang = _text(obj.get(c.language), c.language, where)
    else:
        found = langlib.from_paths([path])[0]
        lang = found.encode() if found is not None else None
    return text, repo, path, lang


def _batch(
    rows: list[tuple[bytes | None, ...]], at: tuple[int, int, int, int], how: Reading
) -> Batch:
    values = [r[3].decode("utf-8", "replace") if r[3] is not None else None for r in rows]
    codes, names, keep = langlib.codes_of(values, how.languages)
    info = BatchInfo(at[0], at[1], at[2], at[3], codes, names)
    col = [BinaryColumn.of([r[k] for r in rows]) for k in range(3)]
    return Batch(info, col[0], col[1], keep, path=col[2])


def read(
    path: Path,
    file_index: int,
    how: Reading,
    batch_bytes: int,
    start: tuple[int, int],
    groups: int | None,
    group_row: int,
    group_bytes: int = GROUP_BYTES,
) -> Iterator[Batch]:
    """Batches of one file from (group, row) = start, at most `groups` groups; group_row is
    the start group's first row in the file. Raises READ_ERRORS where reading fails."""
    end = None if groups is None else (start[0] + groups) * group_bytes
    group = start[0]
    try:
        with open_stream(path) as f:
            pos = _skip_to(f, start[0] * group_bytes, not path.name.endswith(".jsonl"))
            row, file_row = 0, group_row
            rows: list[tuple[bytes | None, ...]] = []
            size, first = 0, (group, 0, file_row)
            while end is None or pos < end:
                line = f.readline()
                if not line:
                    break
                g = pos // group_bytes
                if g != group:  # a batch never spans two groups
                    if rows:
                        yield _batch(rows, (file_index, *first), how)
                    rows, size, group, row = [], 0, g, 0
                pos += len(line)
                if group == start[0] and row < start[1]:
                    row, file_row = row + 1, file_row + 1
                    continue
                if not rows:
                    first = (group, row, file_row)
                rows.append(parse(line, how, path.name.encode(), f"line {file_row + 1}"))
                size += len(line)
                row, file_row = row + 1, file_row + 1
                if size >= batch_bytes:
                    yield _batch(rows, (file_index, *first), how)
                    rows, size = [], 0
            if rows:
                yield _batch(rows, (file_index, *first), how)
    except READ_ERRORS as e:
        raise Unreadable(group, None, e) from None
