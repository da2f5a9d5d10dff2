"""A folder of source files (`schema: files`, `input=~/src`): each regular file is one record.

`walk` lists every regular file under the folder, sorted by path, leaving out what is
not source: the folders SKIP_DIRS names and virtualenvs (a `pyvenv.cfg`), whatever a
`.gitignore` names (each one for its own folder and below, git's rules through the
pathspec library, a deeper file's patterns winning), symlinked folders (never entered)
and symlinked files that point out of the folder or nowhere. What it leaves out is
counted by reason in the output's state, never silently lost.

The folder is one input of the stage, whose rows are its files in that order (the
manifest lists each file with its size and mtime, so an edit is seen on a rerun), cut
into row groups of up to GROUP_FILES files or GROUP_BYTES of text (`layout`): a worker
reads a group's files into shared memory as it decodes a parquet row group, so a file
costs no task, segment or round trip of its own (one of each per file was measured 4x
slower on a folder of 34 k files than the same text as one JSON Lines file). A file
that cannot be read when its turn comes is `unreadable`, counted; the folder goes on.
The record: the text; the
repository, the nearest enclosing folder with a `.git` (the git top-level; the input
folder's own name when that is the folder itself), else the first folder level under
the input (a file at the top belongs to the input folder's name); the path within that
repository; the language from the extension (languages.py). A file over
`max_doc_bytes` is not read (`too_large`), and one with a NUL byte in its first 8 KB is
binary (`binary`), as git decides; both are counted, like every other skip.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pathspec

from model.errors import InputError
from pipeline.corpus import languages as langlib
from pipeline.corpus.batches import STATUS, Batch, BatchInfo, BinaryColumn, Reading

SKIP_DIRS = frozenset(
    {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox"}
    | {".mypy_cache", ".pytest_cache", ".ruff_cache"}
)
BINARY_PROBE = 8192  # git's own test: a NUL in the first 8000 bytes
# a row group: a run of files, read by one worker into shared memory (reading.py)
GROUP_FILES = 512
GROUP_BYTES = 16 << 20
_BINARY, _TOO_LARGE = STATUS.index("binary"), STATUS.index("too_large")
_UNREADABLE = STATUS.index("unreadable")


@dataclass(frozen=True)
class Listing:
    """What a stage reads, what it records, and (a folder's) what was left out."""

    files: list[Path]  # the inputs read, in order: table files, or the one folder
    inputs: list[Path]  # the files the output depends on (manifest `inputs`): a folder's files
    # reason -> files left out (folders, for the `*folders` reasons: never entered); {} for
    # parquet and JSON Lines inputs, whose folder's other files are simply not input
    ignored: dict[str, int]


def _gitignore(folder: Path) -> pathspec.GitIgnoreSpec | None:
    f = folder / ".gitignore"
    if not f.is_file():
        return None
    try:
        text = f.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"{f}: unreadable ({e.strerror}); fix its permissions") from None
    return pathspec.GitIgnoreSpec.from_lines(text.splitlines())


def _ignored(specs: list[tuple[Path, pathspec.GitIgnoreSpec]], rel: Path, is_dir: bool) -> bool:
    """git's verdict: the last .gitignore (deepest) whose patterns decide this path."""
    verdict = False
    for base, spec in specs:
        sub = rel.relative_to(base).as_posix() + ("/" if is_dir else "")
        found = spec.check_file(sub).include
        if found is not None:
            verdict = bool(found)
    return verdict


def walk(root: Path) -> Listing:
    """Every regular source file under root, sorted by path; what was left out, counted."""
    real = root.resolve()
    files: list[Path] = []
    left: Counter[str] = Counter()
    specs: dict[Path, list[tuple[Path, pathspec.GitIgnoreSpec]]] = {}

    def unreadable(_e: OSError) -> None:  # os.walk would pass over it without a word
        left["unreadable_folders"] += 1

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        here = Path(dirpath)
        rel = here.relative_to(root)
        mine = list(specs.pop(rel, []))  # the .gitignore files above this folder
        spec = _gitignore(here)
        if spec is not None:
            mine.append((rel, spec))
        kept = []
        for d in sorted(dirnames):
            full = here / d
            if d in SKIP_DIRS or (full / "pyvenv.cfg").is_file():
                left["folders"] += 1
            elif full.is_symlink():
                left["symlink_folders"] += 1
            elif _ignored(mine, rel / d, is_dir=True):
                left["gitignore_folders"] += 1
            else:
                kept.append(d)
                specs[rel / d] = mine
        dirnames[:] = kept
        for name in filenames:
            full = here / name
            if _ignored(mine, rel / name, is_dir=False):
                left["gitignore"] += 1
            elif full.is_symlink() and not _inside(full, real):
                left["symlink_outside"] += 1
            elif not full.is_file():
                left["not_regular"] += 1
            else:
                files.append(full)
    files.sort(key=lambda p: p.relative_to(root).parts)
    return Listing([root], files, dict(sorted(left.items())))


def _inside(link: Path, real_root: Path) -> bool:
    target = link.resolve()
    return target.is_file() and target.is_relative_to(real_root)


def repository_of(root: Path, path: Path) -> tuple[str, str]:
    """(repository, path within it) of a file under root."""
    rel = path.relative_to(root)
    for depth in range(len(rel.parts) - 1, -1, -1):
        top = root.joinpath(*rel.parts[:depth])
        if (top / ".git").exists():
            name = root.resolve().name if depth == 0 else Path(*rel.parts[:depth]).as_posix()
            return name, Path(*rel.parts[depth:]).as_posix()
    if len(rel.parts) == 1:
        return root.resolve().name, rel.as_posix()
    return rel.parts[0], Path(*rel.parts[1:]).as_posix()


def layout(
    root: Path, members: list[Path], how: Reading
) -> tuple[list[tuple[int, int]], list[tuple[str, ...]]]:
    """The folder's row groups: runs of consecutive files, up to GROUP_FILES files or
    GROUP_BYTES of text each; per group (rows, text bytes), and its files (paths under
    root). A file too large to read counts no bytes (it is never read)."""
    groups: list[tuple[int, int]] = []
    names: list[tuple[str, ...]] = []
    run: list[str] = []
    size = 0
    for p in members:
        try:
            n = p.stat().st_size
        except OSError:
            n = 0  # gone or unreadable: the reader counts it (`unreadable`)
        run.append(p.relative_to(root).as_posix())
        size += n if n <= how.max_doc_bytes else 0
        if len(run) >= GROUP_FILES or size >= GROUP_BYTES:
            groups.append((len(run), size))
            names.append(tuple(run))
            run, size = [], 0
    if run:
        groups.append((len(run), size))
        names.append(tuple(run))
    return groups, names


def _record(root: Path, rel: str, how: Reading) -> tuple[bytes, int, bytes, bytes, str | None]:
    """One file's (text, the reader's skip, repository, path, language)."""
    path = root / rel
    try:
        size = path.stat().st_size
        data = path.read_bytes() if size <= how.max_doc_bytes else b""
    except OSError:  # gone since the listing, or no permission: counted, the folder goes on
        data, skip = b"", _UNREADABLE
    else:
        skip = _TOO_LARGE if size > how.max_doc_bytes else 0
    if b"\0" in data[:BINARY_PROBE]:
        skip, data = _BINARY, b""
    repo, inner = repository_of(root, path)
    enc = "surrogateescape"  # a file name that is not UTF-8 keeps its bytes
    return (
        data,
        skip,
        repo.encode("utf-8", enc),
        inner.encode("utf-8", enc),
        langlib.language_of(inner),
    )


def read_group(
    root: Path,
    file_index: int,
    how: Reading,
    batch_bytes: int,
    start: tuple[int, int],
    group_row: int,
    members: tuple[str, ...],
) -> Iterator[Batch]:
    """Batches of group start[0] (its files `members`) from row start[1]; group_row is the
    group's first row in the folder."""
    rows: list[tuple[bytes, int, bytes, bytes, str | None]] = []
    first, size = start[1], 0
    for i in range(start[1], len(members)):
        rows.append(_record(root, members[i], how))
        size += len(rows[-1][0])
        if size >= batch_bytes or i == len(members) - 1:
            codes, names, keep = langlib.codes_of([r[4] for r in rows], how.languages)
            info = BatchInfo(file_index, start[0], first, group_row + first, codes, names)
            yield Batch(
                info,
                BinaryColumn.of([r[0] for r in rows]),
                BinaryColumn.of([r[2] for r in rows]),
                keep,
                path=BinaryColumn.of([r[3] for r in rows]),
                skip=np.array([r[1] for r in rows], dtype=np.int8),
            )
            rows, first, size = [], i + 1, 0
