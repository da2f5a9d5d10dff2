"""`make tokenize`: a corpus of source code -> GPT-2 uint16 token shards + manifest.

    python -m pipeline tokenize --config configs/tokenize.yaml [key=value ...]

The main process hands out the sorted input files' row groups and row ranges
to a pool of worker processes that read, decode and encode them (pool.py,
reading.py, worker.py) and consumes the results in input order, so the shards
are the same bytes for any worker count. The writer (writer.py) copies each result
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
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from model import config as configlib
from model import shards, tokenizer
from model.atomic import write_error
from model.config import option
from model.errors import InputError, StateError
from model.lock import exclusive
from model.manifest import MANIFEST, SPLITS, Manifest, read_manifest
from pipeline.corpus import decision, source
from pipeline.corpus import inputs as inputslib
from pipeline.corpus.batches import FileError
from pipeline.corpus.decision import Decision
from pipeline.corpus.pool import Source, Work, read_in_order
from pipeline.corpus.settings import OUTPUT, SourceConfig
from pipeline.corpus.watchdog import MemoryWatchdog
from pipeline.tokenize import manifest
from pipeline.tokenize.progress import Progress
from pipeline.tokenize.worker import encode_batch, split_threshold, warm_up
from pipeline.tokenize.writer import ShardWriter

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/tokenize.yaml"
TokenizerChoice = tokenizer.Name  # (a field called `tokenizer` would hide the module)


@dataclass(kw_only=True)
class TokenizeConfig(SourceConfig):
    output: str = option("data/shards/github-code", "the shard folder")
    tokenizer: TokenizerChoice = option(
        "gpt2",
        "gpt2 (GPT-2's BPE) or p50k (Codex's: GPT-2's plus runs of spaces, about a third "
        "fewer tokens for Python); the manifest records it, every later stage reads it there",
    )
    shard_tokens: int = option(100_000_000, "tokens per shard", affects=OUTPUT, gt=0)
    val_fraction: float = option(
        0.005, "share of repositories (by repo_name) that go to val", affects=OUTPUT, ge=0, lt=1
    )
    dedup: Literal["exact", "none"] = option(
        "exact", "exact: skip a document equal to an earlier one but for whitespace", affects=OUTPUT
    )
    near_dedup: str = option(
        "",
        "a `make dedup` output folder: skip the near-duplicates it lists; '' = off",
        affects=OUTPUT,
    )
    force: bool = option(False, "delete this output's shards and manifest, start over")


CONFIG = TokenizeConfig


def settings_of(cfg: TokenizeConfig, near: Decision | None) -> dict[str, Any]:
    """The config keys that shape the output bytes (and the near-dedup decision's hash)."""
    settings = configlib.values(cfg, OUTPUT)
    if near is not None:
        settings["near_dedup_sha256"] = near.sha256
    return settings


def check_inputs(listing: source.Listing, cfg: TokenizeConfig) -> list[source.FileInfo | str]:
    """Survey every input before any work: schema errors first, the row groups to read."""
    return source.survey(listing.files, cfg.reading(), cfg.on_error, listing.inputs)


def previous_state(out: Path, request: inputslib.Made, force: bool) -> Manifest | None:
    """The manifest to resume from (None: start afresh); refuse a changed request."""
    if force:
        n = manifest.clear(out)
        if n:
            log.info("force=true: removed %d old shards and the manifest of %s", n, out)
        return None
    old = read_manifest(out)
    if old is None:
        found = [p.name for s in SPLITS for p in out.glob(f"{s}_*.npy")]
        if found:
            raise StateError(
                f"{out} holds shards ({found[0]}, ...) but no {MANIFEST}; "
                "choose another output= or pass force=true to replace them"
            )
        return None
    changed = inputslib.differences(
        inputslib.Made(old.inputs, old.settings, old.tokenizer), request
    )
    if changed:
        shown = "; ".join(changed[:5]) + (
            f"; and {len(changed) - 5} more" if len(changed) > 5 else ""
        )
        raise StateError(
            f"{out / MANIFEST} was written for other inputs or settings: {shown}. "
            "Pass force=true to delete those shards and start over (or choose another output=)"
        )
    return old


def tokenizer_info(name: str) -> dict[str, Any]:
    """The manifest's record of the tokenizer (its ranks file checked on the way)."""
    return tokenizer.get(name).record()


def up_to_date(out: Path, old: Manifest) -> str:
    """The line a no-op rerun prints; a listed shard that is gone is an error."""
    old.listed_but_missing(out, "pass force=true to tokenize again")
    n = sum(len(v) for v in old.shards.values())
    return (
        f"{out}: up to date ({old.total_tokens():,} tokens in {n} shards); nothing to do "
        "(force=true redoes it)"
    )


def run(cfg: TokenizeConfig) -> int:
    out = Path(cfg.output)
    listing = source.list_inputs(cfg.input, cfg.reading())
    infos = check_inputs(listing, cfg)
    with exclusive(out, "tokenize"):  # one writer per shard folder
        return _tokenize(cfg, out, listing, infos)


def _tokenize(
    cfg: TokenizeConfig, out: Path, listing: source.Listing, infos: list[source.FileInfo | str]
) -> int:
    files = listing.files
    inputs = inputslib.input_entries(listing.inputs)
    near = (
        decision.load(Path(cfg.near_dedup), inputs, cfg.rule_values()) if cfg.near_dedup else None
    )
    request = inputslib.Made(inputs, settings_of(cfg, near), tokenizer_info(cfg.tokenizer))
    old = previous_state(out, request, cfg.force)
    if old is not None and old.complete:
        print(up_to_date(out, old))
        return 0
    head = Manifest(
        complete=False,
        tokenizer=request.tokenizer or {},
        settings=request.settings,
        config=configlib.to_dict(cfg),
        inputs=inputs,
        # a folder's files left out by reason (.git, .gitignore, ...), so none is lost unseen
        ignored=listing.ignored or None,
    )
    writer: ShardWriter | None = None
    try:
        names = [str(f) for f in files]
        writer = ShardWriter(out, cfg.shard_tokens, head, names, old, cfg.dedup == "exact")
        if old is None:
            writer.checkpoint_empty()  # a manifest exists before any shard does
        else:
            log.info("resuming %s from %s", out, writer.position)
        total_bytes = sum(i.text_bytes for i in infos if isinstance(i, source.FileInfo))
        progress = Progress(total_bytes, writer.counts, cfg.progress_seconds)
        with MemoryWatchdog(cfg.max_rss_gb, cfg.min_available_gb) as dog:
            _encode_all(cfg, cfg.source(files, infos, _marker(near)), writer, progress, dog)
        writer.finish()
    except OSError as e:  # reading errors became FileError items: this is the output side
        raise _write_error(e, out, writer) from None
    finally:
        shards.remove_temporaries(out)
    print(progress.summary(writer))
    return 0


def _write_error(e: OSError, out: Path, writer: ShardWriter | None) -> Exception:
    kept = writer.complete_shards() if writer is not None else 0
    return write_error(e, out, f"{kept} complete shards kept in {out}")


def _encode_all(
    cfg: TokenizeConfig, src: Source, writer: ShardWriter, progress: Progress, dog: MemoryWatchdog
) -> None:
    pos = writer.position
    threshold = split_threshold(cfg.val_fraction)
    rules = cfg.rules(digest=cfg.dedup == "exact")
    work = Work(
        functools.partial(encode_batch, rules=rules, threshold=threshold, name=cfg.tokenizer),
        functools.partial(warm_up, name=cfg.tokenizer),
        "pipeline.tokenize.worker",
    )
    hint = functools.partial(_resume_hint, cfg, writer)
    # closing(): an error here (a bad file) must stop the pool now, not when collected
    with contextlib.closing(read_in_order(src, pos, cfg.n_workers(), work, dog, hint)) as results:
        for item, enc in results:
            if isinstance(item, FileError):
                _file_error(cfg, item, writer)
                continue
            writer.consume(item, enc)
            progress.tick(writer)


def _marker(near: Decision | None) -> Any:
    """The rows of a batch that the near-dedup decision drops (workers skip them)."""
    if near is None:
        return None
    return lambda info: near.mark(info.file_index, info.file_row, info.num_rows)


def _resume_hint(cfg: TokenizeConfig, writer: ShardWriter) -> str:
    return (
        f"stopped cleanly, {writer.complete_shards()} complete shards kept in {cfg.output}; "
        "rerun the same command to resume"
    )


def _file_error(cfg: TokenizeConfig, err: FileError, writer: ShardWriter) -> None:
    if cfg.on_error == "fail":
        raise InputError(source.file_error_text(err.path, err.message))
    log.warning("%s: skipped from row group %d (%s)", err.path, err.row_group, err.message)
    writer.skip_file(err)
