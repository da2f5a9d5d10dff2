"""`make tokenize`: parquet files of source code -> GPT-2 uint16 token shards + manifest.

    python -m pipeline tokenize --config configs/tokenize.yaml [key=value ...]

The main process streams batches (bounded by bytes) from the sorted input
files (source.py), has a pool of worker processes encode them (pool.py,
worker.py) and consumes the results in input order, so the shards are the
same bytes for any worker count. The writer (writer.py) copies each result
into one preallocated uint16 buffer per split and writes a shard when a
buffer is full (model/shards.py: temporary name, fsync, rename). After every
shard the manifest (manifest.py) records the resume position and the
accounting; docs/tokenize.md explains how a resume stays exact.

A memory watchdog (watchdog.py) samples the whole process tree; on a trip, a
full disk or a bad file the run stops cleanly: workers killed, temporaries
removed, complete shards and the manifest kept, one line saying how to
resume (rerun the same command).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from model import config as configlib
from model import shards, tokenizer
from model.config import Config, option
from model.errors import InputError, ResourceError, StateError
from model.lock import exclusive
from pipeline.tokenize import manifest, source
from pipeline.tokenize.batches import FileError
from pipeline.tokenize.pool import encoded_in_order
from pipeline.tokenize.progress import Progress
from pipeline.tokenize.watchdog import MemoryWatchdog
from pipeline.tokenize.worker import split_threshold
from pipeline.tokenize.writer import ShardWriter

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/tokenize.yaml"
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
OUTPUT = "output"  # the tag of the keys that change the output bytes (compared on a rerun)


@dataclass(kw_only=True)
class TokenizeConfig(Config):
    # `input` is not tagged: the files themselves are compared (path, size, mtime)
    input: str = option("data/raw", "a folder of *.parquet files, or a glob")
    output: str = option("data/shards/github-code", "the shard folder")
    text_column: str = option("code", "the column that holds the code", affects=OUTPUT)
    shard_tokens: int = option(100_000_000, "tokens per shard", affects=OUTPUT, gt=0)
    val_fraction: float = option(
        0.005, "share of repositories (by repo_name) that go to val", affects=OUTPUT, ge=0, lt=1
    )
    workers: int | Literal["auto"] = option(
        "auto", "encoding processes; auto = the usable cores", ge=1
    )
    max_rss_gb: float = option(4.0, "stop cleanly when all processes together hold this", gt=0)
    min_available_gb: float = option(1.0, "stop cleanly when the machine has less available", ge=0)
    max_doc_bytes: int = option(
        1_000_000, "longer documents are skipped and counted", affects=OUTPUT, gt=0
    )
    languages: list[str] = option(
        factory=list, help="keep only these `language` values; [] = all", affects=OUTPUT
    )
    batch_bytes: int = option(1_000_000, "text bytes per batch sent to a worker", gt=0)
    # fail stops where skip goes on: the shards before are the same, so it is not tagged
    on_error: Literal["fail", "skip"] = option(
        "fail", "unreadable parquet: fail, or skip it and record it in the manifest"
    )
    force: bool = option(False, "delete this output's shards and manifest, start over")
    progress_seconds: float = option(5.0, "seconds between progress lines on stderr")

    def n_workers(self) -> int:
        if self.workers == "auto":
            return max(1, len(os.sched_getaffinity(0)))
        return int(self.workers)


CONFIG = TokenizeConfig


def settings_of(cfg: TokenizeConfig) -> dict[str, Any]:
    """The config keys that shape the output bytes."""
    return configlib.values(cfg, OUTPUT)


def check_inputs(files: list[Path], cfg: TokenizeConfig) -> int:
    """Open every footer before any work: schema errors first; total text bytes for the ETA."""
    total = 0
    for f in files:
        try:
            pf = source.open_checked(f, cfg.text_column, cfg.languages)
        except source.READ_ERRORS as e:
            if cfg.on_error == "skip":
                log.warning("%s: unreadable, will be skipped (%s)", f, e)
                continue
            raise InputError(_file_error_text(str(f), str(e))) from None
        with pf:
            total += source.text_bytes(pf, cfg.text_column)
    return total


def _file_error_text(path: str, msg: str) -> str:
    msg = " ".join(msg.split())[:200]
    return (
        f"{path}: not a readable parquet file ({msg}); replace or delete it, "
        "or pass on_error=skip to skip it (recorded in the manifest)"
    )


def previous_state(
    out: Path, inputs: list[dict[str, Any]], settings: dict[str, Any], force: bool
) -> dict[str, Any] | None:
    """The manifest to resume from (None: start afresh); refuse a changed request."""
    if force:
        n = manifest.clear(out)
        if n:
            log.info("force=true: removed %d old shards and the manifest of %s", n, out)
        return None
    old = shards.read_manifest(out)
    if old is None:
        found = [p.name for s in shards.SPLITS for p in out.glob(f"{s}_*.npy")]
        if found:
            raise StateError(
                f"{out} holds shards ({found[0]}, ...) but no {shards.MANIFEST}; "
                "choose another output= or pass force=true to replace them"
            )
        return None
    changed = manifest.differences(old, inputs, settings, tokenizer_info())
    if changed:
        shown = "; ".join(changed[:5]) + (
            f"; and {len(changed) - 5} more" if len(changed) > 5 else ""
        )
        raise StateError(
            f"{shards.manifest_path(out)} was written for other inputs or settings: {shown}. "
            "Pass force=true to delete those shards and start over (or choose another output=)"
        )
    return old


def tokenizer_info() -> dict[str, Any]:
    return {"name": tokenizer.NAME, "vocab_sha256": tokenizer.vocab_hash()}


def up_to_date(out: Path, old: dict[str, Any]) -> str:
    """The line a no-op rerun prints; a listed shard that is gone is an error."""
    for entries in old["shards"].values():
        for e in entries:
            if not (out / e["name"]).is_file():
                raise StateError(
                    f"{out / e['name']} is listed in {shards.MANIFEST} but missing; "
                    "pass force=true to tokenize again"
                )
    n = sum(len(v) for v in old["shards"].values())
    toks = sum(old["counts"]["tokens"].values())
    return (
        f"{out}: up to date ({toks:,} tokens in {n} shards); nothing to do (force=true redoes it)"
    )


def run(cfg: TokenizeConfig) -> int:
    out = Path(cfg.output)
    files = source.list_inputs(cfg.input)
    total_bytes = check_inputs(files, cfg)
    with exclusive(out, "tokenize"):  # one writer per shard folder
        return _tokenize(cfg, out, files, total_bytes)


def _tokenize(cfg: TokenizeConfig, out: Path, files: list[Path], total_bytes: int) -> int:
    inputs = manifest.input_entries(files)
    settings = settings_of(cfg)
    old = previous_state(out, inputs, settings, cfg.force)
    if old is not None and old.get("complete"):
        print(up_to_date(out, old))
        return 0
    header = {
        "settings": settings,
        "config": configlib.to_dict(cfg),
        "tokenizer": tokenizer_info(),
        "inputs": inputs,
    }
    writer: ShardWriter | None = None
    try:
        writer = ShardWriter(out, cfg.shard_tokens, header, [str(f) for f in files], old)
        if old is None:
            writer.checkpoint_empty()  # a manifest exists before any shard does
        else:
            log.info("resuming %s from %s", out, writer.position)
        progress = Progress(total_bytes, writer.counts, cfg.progress_seconds)
        with MemoryWatchdog(cfg.max_rss_gb, cfg.min_available_gb) as dog:
            _encode_all(cfg, files, writer, progress, dog)
        writer.finish()
    except OSError as e:  # reading errors became FileError items: this is the output side
        raise _write_error(e, out, writer) from None
    finally:
        shards.remove_temporaries(out)
    print(progress.summary(writer))
    return 0


def _write_error(e: OSError, out: Path, writer: ShardWriter | None) -> Exception:
    kept = writer.complete_shards() if writer is not None else 0
    where = f"{e.filename}" if e.filename else str(out)
    if e.errno in DISK_FULL:
        return ResourceError(
            f"disk full writing {where} ({e.strerror}); {kept} complete shards kept in {out}: "
            "free space, then rerun the same command to resume"
        )
    return StateError(f"cannot write {where} ({e.strerror}); fix the output folder and rerun")


def _encode_all(
    cfg: TokenizeConfig,
    files: list[Path],
    writer: ShardWriter,
    progress: Progress,
    dog: MemoryWatchdog,
) -> None:
    pos = writer.position
    items = source.stream(files, cfg.text_column, cfg.languages, cfg.batch_bytes, pos)
    drop = pos.token_offset  # tokens of the first document already in a shard
    threshold = split_threshold(cfg.val_fraction)
    try:
        # closing(): a failure here must stop the pool now, not when the generator is collected
        results = encoded_in_order(items, cfg.n_workers(), cfg.max_doc_bytes, threshold, dog)
        with contextlib.closing(results):
            for item, enc in results:
                dog.check(_resume_hint(cfg, writer))
                if isinstance(item, FileError):
                    _file_error(cfg, item, writer)
                    continue
                assert enc is not None
                writer.consume(item, enc, drop)
                drop = 0
                progress.tick(writer)
    except BrokenProcessPool:
        dog.check(_resume_hint(cfg, writer))
        raise ResourceError(
            "a worker process died (killed by the OS, out of memory?); "
            f"{_resume_hint(cfg, writer)}, with fewer workers= if it happens again"
        ) from None
    dog.check(_resume_hint(cfg, writer))


def _resume_hint(cfg: TokenizeConfig, writer: ShardWriter) -> str:
    return (
        f"stopped cleanly, {writer.complete_shards()} complete shards kept in {cfg.output}; "
        "rerun the same command to resume"
    )


def _file_error(cfg: TokenizeConfig, err: FileError, writer: ShardWriter) -> None:
    if cfg.on_error == "fail":
        raise InputError(_file_error_text(err.path, err.message))
    log.warning("%s: skipped from row group %d (%s)", err.path, err.row_group, err.message)
    writer.skip_file(err)
