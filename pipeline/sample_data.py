"""`make sample-data`: a built-in sample of real source code, as github-code parquet.

Every machine that ran `make setup` holds a few hundred MB of real code:
Python's standard library and the packages installed in `.venv` (Python,
C/C++ headers, shell, Markdown, ...). This stage turns a slice of it into
`data/sample/part-NNNNN.parquet` with exactly the schema of the Hugging Face
`codeparrot/github-code` dataset, so the demo and the benchmark run the real
tokenize stage on real files without any download.

Which files: every candidate file (known extension, not empty, at most
`max_file_bytes`) gets a stable key, sha256 of "<repo_name>/<path>"; files are
taken in key order until `max_bytes` of UTF-8 text is reached. So the slice is
a uniform mix of the whole tree, a larger `max_bytes` gives a superset, and
the output is a pure function of the files present. Rows are written sorted
by (repo_name, path).

repo_name is `python/stdlib-<topdir>` (top-level modules: `python/stdlib`)
for the standard library and `pypi/<distribution>` for installed packages;
path is relative to the source root. A `sample-data.json` stamp written last
makes a rerun with the same config and the same source files a no-op.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sysconfig
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import config as configlib
from pipeline.atomic import write_text
from pipeline.errors import ConfigError, StateError

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/sample-data.yaml"
STAMP = "sample-data.json"
PART = "part-{:05d}.parquet"

# The schema of codeparrot/github-code, column for column.
SCHEMA = pa.schema(
    [
        ("code", pa.string()),
        ("repo_name", pa.string()),
        ("path", pa.string()),
        ("language", pa.string()),
        ("license", pa.string()),
        ("size", pa.int64()),
    ]
)

# github-code's language names and the extensions its loader maps to them.
# `.pyi` stubs are Python syntax, so they count as Python here too.
_LANGUAGES: dict[str, tuple[str, ...]] = {
    "Assembly": (".asm",),
    "Batchfile": (".bat", ".cmd"),
    "C": (".c", ".h"),
    "C#": (".cs",),
    "C++": (".cpp", ".hpp", ".c++", ".h++", ".cc", ".hh", ".cxx", ".hxx"),
    "CMake": (".cmake",),
    "CSS": (".css",),
    "FORTRAN": (".f90", ".f", ".f03", ".f08", ".f77", ".f95", ".for", ".fpp"),
    "GO": (".go",),
    "Haskell": (".hs",),
    "HTML": (".html", ".htm"),
    "Java": (".java",),
    "JavaScript": (".js",),
    "Julia": (".jl",),
    "Lua": (".lua",),
    "Markdown": (".md", ".markdown"),
    "PHP": (".php",),
    "Perl": (".pl", ".pm"),
    "PowerShell": (".ps1", ".psd1", ".psm1"),
    "Python": (".py", ".pyi"),
    "Ruby": (".rb",),
    "Rust": (".rs",),
    "SQL": (".sql",),
    "Scala": (".scala",),
    "Shell": (".sh", ".bash", ".zsh"),
    "TeX": (".tex",),
    "TypeScript": (".ts", ".tsx"),
    "Visual Basic": (".vb",),
}
EXTENSIONS = {ext: lang for lang, exts in _LANGUAGES.items() for ext in exts}
FILENAMES = {"Makefile": "Makefile", "CMakeLists.txt": "CMake", "Dockerfile": "Dockerfile"}
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


@dataclass(kw_only=True)
class SampleDataConfig:
    output: str = field(default="data/sample", metadata={"help": "folder for part-*.parquet"})
    max_bytes: int = field(
        default=8_000_000, metadata={"help": "total UTF-8 bytes of code to write"}
    )
    file_bytes: int = field(
        default=32_000_000, metadata={"help": "target code bytes per parquet file"}
    )
    row_groups_per_file: int = field(default=8, metadata={"help": "row groups in a full file"})
    max_file_bytes: int = field(
        default=1_000_000, metadata={"help": "source files larger than this are skipped"}
    )
    sources: list[str] = field(
        default_factory=lambda: ["stdlib", "site-packages"],
        metadata={"help": "roots: stdlib, site-packages, or folder paths"},
    )
    force: bool = field(default=False, metadata={"help": "rewrite even if the config changed"})

    def __post_init__(self) -> None:
        bad = [
            k
            for k in ("max_bytes", "file_bytes", "row_groups_per_file", "max_file_bytes")
            if getattr(self, k) <= 0
        ]
        if bad:
            raise ConfigError(f"{', '.join(bad)} must be > 0")
        if not self.sources:
            raise ConfigError("sources is empty; list stdlib, site-packages or folders")


CONFIG = SampleDataConfig


@dataclass(frozen=True)
class Candidate:
    key: str  # sha256 of repo_name/path: the sampling order
    file: Path
    repo_name: str
    path: str
    language: str
    license: str
    size: int  # bytes on disk


def language_of(name: str) -> str | None:
    if name in FILENAMES:
        return FILENAMES[name]
    ext = os.path.splitext(name)[1]
    return EXTENSIONS.get(ext) or EXTENSIONS.get(ext.lower())


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


def select(cands: list[Candidate], max_bytes: int) -> tuple[list[tuple[Candidate, str]], Counter]:
    """Read candidates in key order until max_bytes of text; skip non-text files."""
    chosen: list[tuple[Candidate, str]] = []
    skipped: Counter[str] = Counter()
    total = 0
    for c in cands:
        if total + c.size > max_bytes:
            continue  # a smaller file further on may still fit
        try:
            text = c.file.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            skipped["not_utf8"] += 1
            continue
        except OSError:
            skipped["unreadable"] += 1
            continue
        if "\x00" in text:
            skipped["binary"] += 1
            continue
        chosen.append((c, text))
        total += len(text.encode("utf-8"))
        if max_bytes - total < 64:  # nothing useful fits any more
            break
    chosen.sort(key=lambda ct: (ct[0].repo_name, ct[0].path))
    return chosen, skipped


def _table(rows: list[tuple[Candidate, str]]) -> pa.Table:
    return pa.table(
        {
            "code": [t for _, t in rows],
            "repo_name": [c.repo_name for c, _ in rows],
            "path": [c.path for c, _ in rows],
            "language": [c.language for c, _ in rows],
            "license": [c.license for c, _ in rows],
            "size": [len(t.encode("utf-8")) for _, t in rows],
        },
        schema=SCHEMA,
    )


def _chunks(rows: list[tuple[Candidate, str]], target: int) -> list[list[tuple[Candidate, str]]]:
    """Split rows, in order, into runs of about `target` text bytes each."""
    out: list[list[tuple[Candidate, str]]] = [[]]
    size = 0
    for row in rows:
        if out[-1] and size >= target:
            out.append([])
            size = 0
        out[-1].append(row)
        size += len(row[1].encode("utf-8"))
    return out if out[0] else []


def write_parts(
    out_dir: Path, rows: list[tuple[Candidate, str]], cfg: SampleDataConfig
) -> list[dict]:
    """part-NNNNN.parquet files of ~file_bytes, each of several row groups; tmp + rename."""
    written = []
    group_bytes = max(1, cfg.file_bytes // cfg.row_groups_per_file)
    for i, part_rows in enumerate(_chunks(rows, cfg.file_bytes)):
        final = out_dir / PART.format(i)
        tmp = final.with_name(final.name + ".tmp")
        with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
            for group in _chunks(part_rows, group_bytes):
                writer.write_table(_table(group), row_group_size=len(group))
        os.replace(tmp, final)
        nbytes = sum(len(t.encode("utf-8")) for _, t in part_rows)
        written.append({"file": final.name, "rows": len(part_rows), "code_bytes": nbytes})
    return written


def _settings(cfg: SampleDataConfig) -> dict[str, Any]:
    """The config keys that shape the output (not `force`, not where it goes)."""
    d = configlib.to_dict(cfg)
    return {k: v for k, v in d.items() if k not in ("force", "output")}


def _check_previous(out_dir: Path, settings: dict[str, Any], fp: str, force: bool) -> bool:
    """True when the stamp says this exact output is already there."""
    stamp = out_dir / STAMP
    if not stamp.is_file():
        foreign = [p.name for p in out_dir.glob("*.parquet") if not p.name.startswith("part-")]
        if foreign and not force:
            raise StateError(
                f"{out_dir} holds other parquet files ({foreign[0]}, ...); "
                "choose another output= or pass force=true"
            )
        return False
    old = json.loads(stamp.read_text(encoding="utf-8"))
    changed = [k for k in settings if old.get("config", {}).get(k) != settings[k]]
    if old.get("sources_fingerprint") != fp:
        changed.append("the source files (a package was added, removed or changed)")
    files_ok = all((out_dir / f["file"]).is_file() for f in old.get("files", []))
    if not changed and files_ok:
        return True
    if changed and not force:
        raise StateError(
            f"{out_dir} was written with other settings; changed: {', '.join(changed)}. "
            "Pass force=true to rewrite it (or choose another output=)"
        )
    return False


def run(cfg: SampleDataConfig) -> int:
    t0 = time.perf_counter()
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    cands, skipped = candidates(cfg.sources, cfg.max_file_bytes)
    fp = fingerprint(cands)
    settings = _settings(cfg)
    if _check_previous(out_dir, settings, fp, cfg.force):
        log.info("%s is up to date (same config and source files); nothing to do", out_dir)
        return 0
    rows, read_skips = select(cands, cfg.max_bytes)
    skipped.update(read_skips)
    if not rows:
        raise StateError(f"sources {cfg.sources} hold no usable text files; list other sources=")
    (out_dir / STAMP).unlink(missing_ok=True)
    for old in list(out_dir.glob("part-*.parquet")) + list(out_dir.glob("part-*.tmp")):
        old.unlink()
    files = write_parts(out_dir, rows, cfg)
    langs = Counter(c.language for c, _ in rows)
    total = sum(f["code_bytes"] for f in files)
    stamp = {
        "config": settings,
        "sources_fingerprint": fp,
        "files": files,
        "rows": len(rows),
        "code_bytes": total,
        "languages": dict(sorted(langs.items())),
        "repos": len({c.repo_name for c, _ in rows}),
        "skipped": dict(sorted(skipped.items())),
    }
    write_text(out_dir / STAMP, json.dumps(stamp, indent=1) + "\n")
    log.info(
        "wrote %d files, %d rows, %.1f MB of code from %d repos to %s in %.1fs",
        len(files),
        len(rows),
        total / 1e6,
        stamp["repos"],
        out_dir,
        time.perf_counter() - t0,
    )
    log.info("languages: %s", ", ".join(f"{k} {v}" for k, v in langs.most_common()))
    log.info("skipped: %s", ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none")
    return 0
