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

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model import config as configlib
from model.atomic import write_text
from model.config import Config, option
from model.errors import StateError
from pipeline.sample_data.parts import select as select_rows
from pipeline.sample_data.parts import write_parts
from pipeline.sample_data.sources import candidates, fingerprint

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/sample-data.yaml"
STAMP = "sample-data.json"
OUTPUT = "output"  # the tag of the keys that shape the output (compared on a rerun)


@dataclass(kw_only=True)
class SampleDataConfig(Config):
    output: str = option("data/sample", "folder for part-*.parquet")
    max_bytes: int = option(8_000_000, "total UTF-8 bytes of code to write", affects=OUTPUT, gt=0)
    file_bytes: int = option(32_000_000, "target code bytes per parquet file", affects=OUTPUT, gt=0)
    row_groups_per_file: int = option(8, "row groups in a full file", affects=OUTPUT, gt=0)
    max_file_bytes: int = option(
        1_000_000, "source files larger than this are skipped", affects=OUTPUT, gt=0
    )
    sources: list[str] = option(
        factory=lambda: ["stdlib", "site-packages"],
        help="roots: stdlib, site-packages, or folder paths",
        affects=OUTPUT,
    )
    force: bool = option(False, "rewrite even if the config changed")

    def checks(self) -> list[str]:
        out = super().checks()
        if not self.sources:
            out.append("sources is empty; list stdlib, site-packages or folders")
        return out


CONFIG = SampleDataConfig


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
    settings = configlib.values(cfg, OUTPUT)
    if _check_previous(out_dir, settings, fp, cfg.force):
        log.info("%s is up to date (same config and source files); nothing to do", out_dir)
        return 0
    rows, read_skips = select_rows(cands, cfg.max_bytes)
    skipped.update(read_skips)
    if not rows:
        raise StateError(f"sources {cfg.sources} hold no usable text files; list other sources=")
    (out_dir / STAMP).unlink(missing_ok=True)
    for old in list(out_dir.glob("part-*.parquet")) + list(out_dir.glob("part-*.tmp")):
        old.unlink()
    files = write_parts(out_dir, rows, cfg.file_bytes, cfg.row_groups_per_file)
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
