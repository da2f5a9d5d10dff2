"""`make dedup`: near-duplicate removal before tokenize, MinHash over word 5-grams and LSH.

    python -m pipeline dedup --config configs/dedup.yaml [key=value ...]

Phase 1, signing: the input is read as tokenize reads it (pipeline/corpus/:
byte-bounded batches, in input order) and a pool of workers on
every core applies tokenize's rules and computes each kept document's
MinHash band keys (worker.py, minhash.py). The keys go to partition files on
disk (buckets.py); every `checkpoint_mb` of them the partitions are fsynced and the
state file (`dedup.json`, complete: false) records the position and the
valid record counts, so a SIGKILL loses at most that much work and a rerun
goes on from there. Phase 2, clustering: each partition is sorted in turn,
documents sharing a band key are joined, and the connected components are
the clusters; every document but the first (in input order) of each cluster
is dropped. The decision (pipeline/corpus/decision.py) is written last, atomically; tokenize
reads it (`near_dedup: <this output folder>`). A kill during phase 2 redoes
phase 2 only.

The parameters: `threshold` (0.7, StarCoder's Jaccard threshold), `num_perm`
(128), `shingle` (5 words); the bands and rows of the LSH are chosen for the
threshold (minhash.lsh_bands: 14 bands of 9 rows for 0.7 and 128). Output is a
pure function of the input files and these keys: any worker count and batch
size give the same bytes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model import config as configlib
from model.atomic import write_error
from model.config import option
from model.errors import InputError, StateError
from model.lock import exclusive
from model.progress import Ticker
from pipeline.corpus import decision, source
from pipeline.corpus import inputs as inputslib
from pipeline.corpus.batches import STATUS, BatchInfo, FileError, Position
from pipeline.corpus.decision import DedupCounts, DedupState
from pipeline.corpus.pool import Work, read_in_order
from pipeline.corpus.settings import OUTPUT, SourceConfig
from pipeline.corpus.watchdog import MemoryWatchdog
from pipeline.dedup.buckets import (
    EDGE,
    Partitions,
    bucket_edges,
    components,
    partitions_for,
)
from pipeline.dedup.minhash import Params, lsh_bands
from pipeline.dedup.worker import Signed, sign_batch, warm_up

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/dedup.yaml"


@dataclass(kw_only=True)
class DedupConfig(SourceConfig):
    output: str = option("data/dedup/github-code", "the decision folder (tokenize's near_dedup)")
    threshold: float = option(
        0.7,
        "Jaccard similarity of word 5-grams that makes near-duplicates",
        affects=OUTPUT,
        gt=0,
        lt=1,
    )
    num_perm: int = option(128, "MinHash permutations", affects=OUTPUT, ge=2)
    shingle: int = option(5, "words per shingle", affects=OUTPUT, ge=1)
    checkpoint_mb: float = option(
        32, "band keys held in memory before they go to disk and the state is saved", gt=0
    )
    force: bool = option(False, "delete this output's state and decision, start over")

    def params(self) -> Params:
        bands, rows = lsh_bands(self.threshold, self.num_perm)
        return Params(num_perm=self.num_perm, bands=bands, rows=rows, shingle=self.shingle)


CONFIG = DedupConfig


def run(cfg: DedupConfig) -> int:
    out = Path(cfg.output)
    listing = source.list_inputs(cfg.input, cfg.reading())
    infos = source.survey(listing.files, cfg.reading(), cfg.on_error, listing.inputs)
    with exclusive(out, "dedup"):
        try:
            return _dedup(cfg, out, listing, infos)
        except OSError as e:  # reading errors became FileError items: this is the output side
            raise write_error(e, out, f"the work so far is kept in {out}") from None


def _dedup(cfg: DedupConfig, out: Path, listing: source.Listing, infos: list[Any]) -> int:
    files = listing.files
    inputs = inputslib.input_entries(listing.inputs)
    settings = configlib.values(cfg, OUTPUT)
    state = _previous(out, inputslib.Made(inputs, settings), cfg.force)
    if state is not None and state.complete:
        print(f"{out}: up to date ({_counts_line(state.counts)}); nothing to do")
        return 0
    params = cfg.params()
    rows = [i.rows if i else 0 for i in infos]
    if state is None:
        state = DedupState(
            inputs=inputs,
            settings=settings,
            rules=cfg.rule_values(),
            params=params.__dict__,
            partitions=partitions_for(sum(rows), params.bands),
            ignored=listing.ignored or None,
        )
        decision.write_progress(out, state)
    else:
        log.info("resuming %s (%s) at %s", out, state.phase, state.position)
    parts = Partitions(out, state.partitions, state.records)
    with MemoryWatchdog(cfg.max_rss_gb, cfg.min_available_gb) as dog:
        if state.phase == "sign":
            _sign(cfg, files, infos, state, parts, dog)
        dropped, state.counts.dropped, state.counts.clusters = _cluster(parts, rows, dog)
    decision.write(out, state, dropped)
    parts.remove()
    print(f"dedup: {_counts_line(state.counts)}; decision in {out}")
    return 0


def _previous(out: Path, request: inputslib.Made, force: bool) -> DedupState | None:
    """The state to go on from (None: start afresh); a changed request is refused."""
    if force:
        for p in (out / decision.STATE, out / decision.DROPPED, *out.glob("keys-*.bin")):
            p.unlink(missing_ok=True)
        return None
    state = decision.read_state(out)
    if state is None:
        return None
    changed = inputslib.differences(state.made(), request)
    if changed:
        raise StateError(
            f"{out / decision.STATE} was made for other inputs or settings: "
            f"{'; '.join(changed[:5])}. Pass force=true to start over (or choose another output=)"
        )
    return state


def _sign(
    cfg: DedupConfig,
    files: list[Path],
    infos: list[Any],
    state: DedupState,
    parts: Partitions,
    dog: MemoryWatchdog,
) -> None:
    """Phase 1: band keys of every kept document into the partitions, checkpointed."""
    pos = state.position
    src = cfg.source(files, infos)
    work = Work(
        functools.partial(sign_batch, rules=cfg.rules(digest=False), params=cfg.params()),
        warm_up,
        "pipeline.dedup.worker",
    )
    total = sum(i.text_bytes for i in infos if isinstance(i, source.FileInfo))
    progress = _Progress(total, cfg.progress_seconds, state)
    hint = functools.partial(_hint, cfg)
    # closing(): an error here (a bad file) must stop the pool now, not when collected
    with contextlib.closing(read_in_order(src, pos, cfg.n_workers(), work, dog, hint)) as results:
        for item, signed in results:
            if isinstance(item, FileError):
                _file_error(cfg, item, state)
                state.position = Position(item.file_index + 1)
            else:
                _take(item, signed, state, parts)
            if parts.buffered >= cfg.checkpoint_mb * 2**20:
                _checkpoint(Path(cfg.output), state, parts)
            progress.tick()
    state.phase = "cluster"
    _checkpoint(Path(cfg.output), state, parts)


def _take(batch: BatchInfo, signed: Signed, state: DedupState, parts: Partitions) -> None:
    ids = decision.row_ids(batch.file_index, batch.file_row, batch.num_rows)[signed.rows]
    parts.add(signed.keys, ids)
    c = state.counts
    c.read += batch.num_rows
    c.text_bytes += signed.nbytes
    c.signed += len(signed.rows)
    values, counts = np.unique(signed.status, return_counts=True)
    for v, n in zip(values.tolist(), counts.tolist(), strict=True):
        if v:
            c.skipped[STATUS[v]] = c.skipped.get(STATUS[v], 0) + n
    state.position = Position(batch.file_index, batch.row_group, batch.row + batch.num_rows)


def _checkpoint(out: Path, state: DedupState, parts: Partitions) -> None:
    state.records = parts.flush()
    decision.write_progress(out, state)


def _file_error(cfg: DedupConfig, err: FileError, state: DedupState) -> None:
    if cfg.on_error == "fail":
        raise InputError(source.file_error_text(err.path, err.message))
    log.warning("%s: skipped from row group %d (%s)", err.path, err.row_group, err.message)
    state.files_skipped.append({"file": err.path, "row_group": err.row_group, "error": err.message})


def _hint(cfg: DedupConfig) -> str:
    return (
        f"stopped cleanly, the work so far kept in {cfg.output}; rerun the same command to resume"
    )


def _cluster(
    parts: Partitions, rows: list[int], dog: MemoryWatchdog
) -> tuple[np.ndarray, int, int]:
    """Phase 2: the dropped row ids, their number and the clusters'."""
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    edge_file = parts.folder / "edges.bin"
    with open(edge_file, "wb") as f:  # scratch: redone in full if phase 2 is interrupted
        for p in range(parts.count):
            bucket_edges(parts.load(p), offsets).tofile(f)
            dog.check(f"rerun the same command to redo the clustering in {parts.folder}")

    def chunks() -> Iterator[np.ndarray]:
        with open(edge_file, "rb") as f:
            while len(chunk := np.fromfile(f, dtype=EDGE, count=4_000_000)):
                yield chunk

    root = components(int(offsets[-1]), chunks)
    dog.check(f"rerun the same command to redo the clustering in {parts.folder}")
    edge_file.unlink()
    dense = np.flatnonzero(root != np.arange(len(root), dtype=root.dtype))
    files = np.searchsorted(offsets, dense, side="right") - 1
    ids = (files.astype(np.uint64) << np.uint64(decision.ROW_BITS)) + (
        dense - offsets[files]
    ).astype(np.uint64)
    # a cluster of two or more is a root that some dropped row points to
    return ids, len(dense), len(np.unique(root[dense]))


def _counts_line(c: DedupCounts) -> str:
    return (
        f"{c.read:,} documents read, {sum(c.skipped.values()):,} skipped by the rules, "
        f"{c.signed:,} signed; {c.dropped:,} near-duplicates in {c.clusters:,} clusters "
        f"({100 * c.dropped / max(c.read, 1):.1f} % of the documents)"
    )


class _Progress:
    """A line on stderr every `every` seconds: documents, MB/s, share done, ETA."""

    def __init__(self, total_bytes: int, every: float, state: DedupState) -> None:
        self.total, self.ticker, self.state = total_bytes, Ticker(every), state
        self.bytes0 = state.counts.text_bytes

    def tick(self) -> None:
        if not self.ticker.due():
            return
        c = self.state.counts
        done = c.text_bytes - self.bytes0
        mb_s = self.ticker.rate(done) / 1e6
        pct = 100.0 * c.text_bytes / self.total if self.total else 0.0
        log.info(
            "%s docs, %s signed, %.1f MB/s, %.0f%%, ETA %s",
            f"{c.read:,}",
            f"{c.signed:,}",
            mb_s,
            pct,
            self.ticker.eta(done, self.total - c.text_bytes),
        )
