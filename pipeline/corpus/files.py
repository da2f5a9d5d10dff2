"""A folder of source files (`schema: files`, `input=~/src`): each regular file is one record.

`walk` lists every regular file under the folder, sorted by path, leaving out what is
not source: the folders SKIP_DIRS names and virtualenvs (a `pyvenv.cfg`), whatever a
`.gitignore` names (each one for its own folder and below, git's rules through the
pathspec library, a deeper file's patterns winning), symlinked folders (never entered)
and symlinked files that point out of the folder or nowhere. What it leaves out is
counted by reason in the output's state, never silently lost.

Each listed file is one input of one row group of one row (the manifest lists it with
its size and mtime, so an edit is seen on a rerun). The record: the text; the
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pathspec

from model.errors import InputError
from pipeline.corpus import languages as langlib
from pipeline.corpus.batches import STATUS, Batch, BatchInfo, BinaryColumn, Reading, Unreadable

SKIP_DIRS = frozenset(
    {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox"}
    | {".mypy_cache", ".pytest_cache", ".ruff_cache"}
)
BINARY_PROBE = 8192  # git's own test: a NUL in the first 8000 bytes
_BINARY, _TOO_LARGE = STATUS.index("binary"), STATUS.index("too_large")


@dataclass(frozen=True)
class Listing:
    """The input files, in reading order, and (a folder's) what was left out."""

    files: list[Path]
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
    return Listing(files, dict(sorted(left.items())))


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


def size_of(path: Path, how: Reading) -> int:
    """The text bytes a worker will read from this file (0 for one too large to read)."""
    size = path.stat().st_size
    return size if size <= how.max_doc_bytes else 0


def read(path: Path, file_index: int, how: Reading) -> Batch:
    """The file's one record; raises Unreadable when it cannot be read."""
    try:
        size = path.stat().st_size
        data = b"" if size > how.max_doc_bytes else path.read_bytes()
    except OSError as e:
        raise Unreadable(0, 1, e) from None
    skip = 0
    if size > how.max_doc_bytes:
        skip = _TOO_LARGE
    elif b"\0" in data[:BINARY_PROBE]:
        skip, data = _BINARY, b""
    repo, rel = repository_of(Path(how.root), path)
    lang = langlib.language_of(rel)
    codes, names, keep = langlib.codes_of([lang], how.languages)
    info = BatchInfo(file_index, 0, 0, 0, codes, names)
    return Batch(
        info,
        BinaryColumn.of([data]),
        BinaryColumn.of([repo.encode("utf-8", "surrogateescape")]),
        keep,
        path=BinaryColumn.of([rel.encode("utf-8", "surrogateescape")]),
        skip=np.array([skip], dtype=np.int8),
    )
