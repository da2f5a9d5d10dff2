"""`make tokenize`: parquet files of source code -> GPT-2 uint16 token shards + manifest.

    python -m pipeline tokenize --config configs/tokenize.yaml [key=value ...]

The main process streams batches (bounded by bytes) from the sorted input
files (pipeline.parquet_source), keeps at most 2 x workers of them in flight
in a process pool (pipeline.tokenize_worker encodes), and consumes the results
in input order, so the shards are the same bytes for any worker count. It
copies each result into one preallocated uint16 buffer per split and writes a
shard when a buffer is full (pipeline.shards: temporary name, fsync, rename).
After every shard the manifest (pipeline.manifest) records the resume position
and the accounting; docs/tokenize.md explains how a resume stays exact.

A memory watchdog (pipeline.watchdog) samples the whole process tree; on a
trip, a full disk or a bad file the run stops cleanly: workers killed,
temporaries removed, complete shards and the manifest kept, one line saying
how to resume (rerun the same command).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import config as configlib
from pipeline import manifest, parquet_source, shards, tokenizer
from pipeline.errors import ConfigError, InputError, ResourceError, StateError
from pipeline.parquet_source import FileError
from pipeline.tokenize_output import Progress, ShardWriter
from pipeline.tokenize_worker import Batch, Encoded, encode_batch, split_threshold, warm_up
from pipeline.watchdog import MemoryWatchdog

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/tokenize.yaml"
# Keys that do not change the output bytes; everything else is compared on a rerun.
NOT_OUTPUT_SHAPING = (
    "input",  # the files themselves are compared (path, size, mtime)
    "output",
    "workers",
    "max_rss_gb",
    "min_available_gb",
    "batch_bytes",
    "on_error",  # fail stops where skip goes on: the shards before are the same
    "force",
    "progress_seconds",
)
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@dataclass(kw_only=True)
class TokenizeConfig:
    input: str = field(
        default="data/raw", metadata={"help": "a folder of *.parquet files, or a glob"}
    )
    output: str = field(default="data/shards/github-code", metadata={"help": "the shard folder"})
    text_column: str = field(default="code", metadata={"help": "the column that holds the code"})
    shard_tokens: int = field(default=100_000_000, metadata={"help": "tokens per shard"})
    val_fraction: float = field(
        default=0.005, metadata={"help": "share of repositories (by repo_name) that go to val"}
    )
    workers: int | str = field(
        default="auto", metadata={"help": "encoding processes; auto = the usable cores"}
    )
    max_rss_gb: float = field(
        default=4.0, metadata={"help": "stop cleanly when all processes together hold this"}
    )
    min_available_gb: float = field(
        default=1.0, metadata={"help": "stop cleanly when the machine has less available"}
    )
    max_doc_bytes: int = field(
        default=1_000_000, metadata={"help": "longer documents are skipped and counted"}
    )
    languages: list[str] = field(
        default_factory=list, metadata={"help": "keep only these `language` values; [] = all"}
    )
    batch_bytes: int = field(
        default=1_000_000, metadata={"help": "text bytes per batch sent to a worker"}
    )
    on_error: str = field(
        default="fail",
        metadata={"help": "unreadable parquet: fail, or skip it and record it in the manifest"},
    )
    force: bool = field(
        default=False, metadata={"help": "delete this output's shards and manifest, start over"}
    )
    progress_seconds: float = field(
        default=5.0, metadata={"help": "seconds between progress lines on stderr"}
    )

    def __post_init__(self) -> None:
        bad = []
        for key in ("shard_tokens", "max_doc_bytes", "batch_bytes", "max_rss_gb"):
            if getattr(self, key) <= 0:
                bad.append(f"{key} must be > 0")
        if not 0.0 <= self.val_fraction < 1.0:
            bad.append(f"val_fraction={self.val_fraction} must be in [0, 1)")
        if self.min_available_gb < 0:
            bad.append("min_available_gb must be >= 0")
        if isinstance(self.workers, str) and self.workers != "auto":
            bad.append(f"workers={self.workers!r} must be auto or a number >= 1")
        if isinstance(self.workers, int) and self.workers < 1:
            bad.append(f"workers={self.workers} must be auto or a number >= 1")
        if self.on_error not in ("fail", "skip"):
            bad.append(f"on_error={self.on_error!r} must be fail or skip")
        if bad:
            raise ConfigError("; ".join(bad))

    def n_workers(self) -> int:
        if self.workers == "auto":
            return max(1, len(os.sched_getaffinity(0)))
        return int(self.workers)


CONFIG = TokenizeConfig


def settings_of(cfg: TokenizeConfig) -> dict[str, Any]:
    """The config keys that shape the output bytes."""
    d = configlib.to_dict(cfg)
    return {k: v for k, v in d.items() if k not in NOT_OUTPUT_SHAPING}


def check_inputs(files: list[Path], cfg: TokenizeConfig) -> int:
    """Open every footer before any work: schema errors first; total text bytes for the ETA."""
    total = 0
    for f in files:
        try:
            pf = parquet_source.open_checked(f, cfg.text_column, cfg.languages)
        except parquet_source.READ_ERRORS as e:
            if cfg.on_error == "skip":
                log.warning("%s: unreadable, will be skipped (%s)", f, e)
                continue
            raise InputError(_file_error_text(str(f), str(e))) from None
        with pf:
            total += parquet_source.text_bytes(pf, cfg.text_column)
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
    old = manifest.read(out)
    if old is None:
        found = [p.name for s in shards.SPLITS for p in out.glob(f"{s}_*.npy")]
        if found:
            raise StateError(
                f"{out} holds shards ({found[0]}, ...) but no {manifest.NAME}; "
                "choose another output= or pass force=true to replace them"
            )
        return None
    changed = manifest.differences(old, inputs, settings, tokenizer_info())
    if changed:
        shown = "; ".join(changed[:5]) + (
            f"; and {len(changed) - 5} more" if len(changed) > 5 else ""
        )
        raise StateError(
            f"{manifest.path(out)} was written for other inputs or settings: {shown}. "
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
                    f"{out / e['name']} is listed in {manifest.NAME} but missing; "
                    "pass force=true to tokenize again"
                )
    n = sum(len(v) for v in old["shards"].values())
    toks = sum(old["counts"]["tokens"].values())
    return (
        f"{out}: up to date ({toks:,} tokens in {n} shards); nothing to do (force=true redoes it)"
    )


def run(cfg: TokenizeConfig) -> int:
    out = Path(cfg.output)
    files = parquet_source.list_inputs(cfg.input)
    total_bytes = check_inputs(files, cfg)
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
    items = parquet_source.stream(
        files, cfg.text_column, cfg.languages, cfg.batch_bytes, (pos[0], pos[1], pos[2])
    )
    drop = pos[3]  # tokens of the first document already in a shard
    try:
        # closing(): a failure here must stop the pool now, not when the generator is collected
        with contextlib.closing(_results(cfg, items, dog)) as results:
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


def _results(
    cfg: TokenizeConfig, items: Iterator[Batch | FileError], dog: MemoryWatchdog
) -> Generator[tuple[Batch | FileError, Encoded | None], None, None]:
    """(item, its encoding) in input order; at most 2 x workers batches in flight."""
    threshold = split_threshold(cfg.val_fraction)
    workers = cfg.n_workers()
    if workers == 1:  # no pool: the same code path, in this process
        tokenizer.get_encoding()  # no pool: no parent to watch
        for item in items:
            yield (
                item,
                encode_batch(item, cfg.max_doc_bytes, threshold)
                if isinstance(item, Batch)
                else None,
            )
        return
    pool = ProcessPoolExecutor(
        workers, mp_context=_context(), initializer=warm_up, initargs=(os.getpid(),)
    )
    pending: deque[tuple[Batch | FileError, Future[Encoded] | None]] = deque()
    clean = False
    try:
        for item in items:
            fut = (
                pool.submit(encode_batch, item, cfg.max_doc_bytes, threshold)
                if isinstance(item, Batch)
                else None
            )
            pending.append((item, fut))
            while len(pending) >= 2 * workers:
                yield _next(pending, dog)
        while pending:
            yield _next(pending, dog)
        clean = True
    finally:
        _stop_pool(pool, clean)


def _context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one, else spawn; never a plain fork.

    The main process runs the watchdog thread, and forking a threaded process
    can copy a held lock into the child. A forkserver forks workers from a
    clean single-threaded process that has already imported the worker module
    (numpy, tiktoken): measured here, 0.3-0.7 s until two workers answer,
    against 0.7-1.2 s for spawn, for ~50 MB more resident memory in the tree.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["pipeline.tokenize_worker"])
        return ctx
    return multiprocessing.get_context("spawn")


def _next(
    pending: deque[tuple[Batch | FileError, Future[Encoded] | None]], dog: MemoryWatchdog
) -> tuple[Batch | FileError, Encoded | None]:
    item, fut = pending.popleft()
    if fut is None:
        return item, None
    while True:
        try:
            return item, fut.result(timeout=0.2)
        except FutureTimeout:
            if dog.tripped is not None:  # the pool may respawn killed workers; do not wait
                raise BrokenProcessPool("memory watchdog tripped") from None


def _stop_pool(pool: ProcessPoolExecutor, clean: bool) -> None:
    """Stop at once: a clean stop must not wait for the batches still in flight."""
    if clean:
        pool.shutdown(wait=True)
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(timeout=5)
