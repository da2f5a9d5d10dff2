"""Which real source files the built-in sample holds: languages, licenses, repositories.

Every candidate file (known extension, not empty, at most `max_file_bytes`)
gets a stable key, sha256 of "<repo_name>/<path>"; the stage takes files in
key order, so the slice is a uniform mix of the whole tree.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from model.errors import ConfigError
from pipeline.corpus.languages import language_of

# Directories that hold no source of their own (caches, metadata, the stdlib's
# own site-packages, which differs from machine to machine).
SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages", ".git"}

# License classifiers and expressions -> github-code's lowercase license ids.
_LICENSES = {
    "mit": "mit",
    "mit license": "mit",
    "apache software license": "apache-2.0",
    "apache-2.0": "apache-2.0",
    "apache 2.0": "apache-2.0",
    "apache license 2.0": "apache-2.0",
    "apache 2.0 license": "apache-2.0",
    "bsd license": "bsd-3-clause",
    "bsd-3-clause": "bsd-3-clause",
    "bsd-2-clause": "bsd-2-clause",
    "isc license (iscl)": "isc",
    "isc": "isc",
    "mozilla public license 2.0 (mpl 2.0)": "mpl-2.0",
    "mpl-2.0": "mpl-2.0",
    "python software foundation license": "psf-2.0",
    "psf-2.0": "psf-2.0",
    "the unlicense (unlicense)": "unlicense",
    "gnu general public license v3 (gplv3)": "gpl-3.0",
    "gnu lesser general public license v3 (lgplv3)": "lgpl-3.0",
}


@dataclass(frozen=True)
class Candidate:
    key: str  # sha256 of repo_name/path: the sampling order
    file: Path
    repo_name: str
    path: str
    language: str
    license: str
    size: int  # bytes on disk


def _license_of(dist: metadata.Distribution) -> str:
    md = dist.metadata
    # PackageMetadata has no .get(); get_all() returns None for a missing field.
    expr = (md.get_all("License-Expression") or [""])[0]
    if expr:
        # github-code has one id per row: keep the first of a compound SPDX expression.
        first = expr.strip().lower().lstrip("(").split()[0]
        return _LICENSES.get(first, first)
    for c in md.get_all("Classifier") or []:
        if c.startswith("License :: "):
            name = c.rsplit(" :: ", 1)[-1].strip().lower()
            if name in _LICENSES:
                return _LICENSES[name]
    short = (md.get_all("License") or [""])[0].strip().lower()
    return _LICENSES.get(short, "unknown")


def _owners(root: Path) -> dict[str, tuple[str, str]]:
    """Top-level name in site-packages -> (distribution name, license), from RECORD files."""
    owners: dict[str, tuple[str, str]] = {}
    dists = sorted(metadata.distributions(path=[str(root)]), key=lambda d: d.metadata["Name"] or "")
    for dist in dists:
        name = (dist.metadata["Name"] or "unknown").lower().replace("_", "-")
        lic = _license_of(dist)
        for f in dist.files or []:
            top = f.parts[0] if f.parts else ""
            if top and not top.endswith((".dist-info", ".egg-info")) and top != "..":
                owners.setdefault(top, (name, lic))
    return owners


def resolve_sources(sources: list[str]) -> list[tuple[str, Path]]:
    """Source names -> (kind, root); kind picks how repo names are made."""
    out: list[tuple[str, Path]] = []
    for s in sources:
        if s == "stdlib":
            out.append(("stdlib", Path(sysconfig.get_paths()["stdlib"])))
        elif s == "site-packages":
            out.append(("site-packages", Path(sysconfig.get_paths()["purelib"])))
        elif Path(s).is_dir():
            out.append(("folder", Path(s)))
        else:
            raise ConfigError(
                f"sources: {s!r} is neither stdlib, site-packages nor an existing folder"
            )
    return out


def _walk(root: Path) -> list[tuple[str, int]]:
    """(relative path, size) of every regular file under root that has a known language."""
    found: list[tuple[str, int]] = []
    for d, dirs, files in os.walk(root):  # does not follow directory symlinks
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.endswith("-info"))
        for name in files:
            if language_of(name) is None:
                continue
            p = os.path.join(d, name)
            if os.path.islink(p):
                continue
            try:
                size = os.stat(p).st_size
            except OSError:
                continue
            found.append((os.path.relpath(p, root), size))
    return found


def candidates(sources: list[str], max_file_bytes: int) -> tuple[list[Candidate], Counter[str]]:
    """Every eligible file of every source, with its repo, license and sampling key."""
    out: list[Candidate] = []
    skipped: Counter[str] = Counter()
    for kind, root in resolve_sources(sources):
        owners = _owners(root) if kind == "site-packages" else {}
        for rel, size in _walk(root):
            if size == 0:
                skipped["empty"] += 1
                continue
            if size > max_file_bytes:
                skipped["too_large"] += 1
                continue
            top = rel.split(os.sep, 1)[0]
            is_top_module = os.sep not in rel
            if kind == "stdlib":
                repo = "python/stdlib" if is_top_module else f"python/stdlib-{top}"
                lic = "psf-2.0"
            elif kind == "site-packages":
                owner = owners.get(top) or owners.get(top.split(".", 1)[0] + ".py")
                dist, lic = owner if owner else (os.path.splitext(top)[0].lower(), "unknown")
                repo = f"pypi/{dist}"
            else:
                repo = f"local/{root.name}"
                lic = "unknown"
            path = rel.replace(os.sep, "/")
            key = hashlib.sha256(f"{repo}/{path}".encode()).hexdigest()
            lang = language_of(os.path.basename(rel))
            assert lang is not None  # _walk keeps only known languages
            out.append(Candidate(key, root / rel, repo, path, lang, lic, size))
    out.sort(key=lambda c: c.key)
    return out, skipped


def fingerprint(cands: list[Candidate]) -> str:
    """A hash of what the sources hold (names and sizes), to notice a changed venv."""
    h = hashlib.sha256()
    for c in cands:
        h.update(f"{c.repo_name}\0{c.path}\0{c.size}\n".encode())
    return h.hexdigest()
