"""The tokenize stage's output side: shard buffers, resume state, the accounting.

`ShardWriter.consume` takes one batch's encoding (in input order) and copies
each split's tokens into that split's preallocated uint16 buffer of
`shard_tokens`, writing a shard each time a buffer fills. At the end of a batch
in which a shard was written it checkpoints, at that batch boundary:

  - the position: the first row of the next batch;
  - the accounting of every document read so far;
  - each split's unfinished buffer, appended to its partial file (only the
    tokens past what the file already holds: never rewritten), with the val
    documents' open records and exact dedup's digests beside them;
  - then the manifest, atomically.

A rerun reloads the partial buffers and reads from the position on. A shard is
a cut of its split's token stream every `shard_tokens` tokens, whatever the
batches, so the rerun writes the same bytes as a run that was never stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from model import shards
from model.errors import StateError
from model.manifest import MANIFEST, SPLITS, Manifest, Resume, ShardEntry, write_manifest
from pipeline.corpus.batches import VAL, BatchInfo, Encoded, FileError, Position
from pipeline.tokenize import manifest
from pipeline.tokenize.counts import Counts
from pipeline.tokenize.docindex import DocIndex, partial_path
from pipeline.tokenize.exact import Seen

log = logging.getLogger(__name__)


def _allocate(n: int) -> np.ndarray:
    """(n,) uint16 in private anonymous memory. numpy asks the kernel for transparent huge
    pages on large arrays itself, so touching a 100 M-token buffer takes ~0.01 s here; a
    shared anonymous mapping (tried) took 0.10 s, and counted as shared memory."""
    return np.empty(max(n, 0), dtype=np.uint16)


class SplitBuffer:
    """One split's shard in the making: buf[:fill]; buf[:persisted] is in its partial file."""

    def __init__(self, name: str, shard_tokens: int, touch: bool) -> None:
        self.name = name
        # Pages count in RSS only once touched. The train buffer is touched in
        # full on its first use (when the workers are already encoding), so the
        # stage's memory does not creep up with the input, and a box without
        # room for it trips the watchdog in the first seconds, not hours in.
        # The val buffer grows with the val data (0.5 % at the defaults).
        self.buf = _allocate(shard_tokens)
        self.touch = touch
        self.fill = 0
        self.persisted = 0
        self.shards: list[ShardEntry] = []

    @property
    def index(self) -> int:
        return len(self.shards)

    def put(self, tokens: np.ndarray) -> None:
        if self.touch:
            self.buf[:] = 0
            self.touch = False
        end = self.fill + len(tokens)
        assert end <= len(self.buf), "a shard buffer overflowed"
        self.buf[self.fill : end] = tokens
        self.fill = end


class ShardWriter:
    """Writes the shards and keeps `record`, the manifest they are listed in: `head` holds
    what the output is a function of; `old`, a manifest to go on from, the rest."""

    def __init__(
        self,
        out: Path,
        shard_tokens: int,
        head: Manifest,
        files: list[str],
        old: Manifest | None,
        exact_dedup: bool = True,
    ) -> None:
        self.out = out
        self.shard_tokens = shard_tokens
        self.record = head
        self.files = files
        self.splits = [SplitBuffer(name, shard_tokens, name == "train") for name in SPLITS]
        self.counts = Counts()
        self.position = Position()
        self.seen = Seen(out) if exact_dedup else None
        self.docs = DocIndex(out, shard_tokens)
        self.finished_partials: list[Path] = []  # to delete once a manifest lists their shards
        if old is not None:
            self._restore(old)
        out.mkdir(parents=True, exist_ok=True)

    @property
    def files_skipped(self) -> list[dict[str, Any]]:
        return self.record.files_skipped

    def _restore(self, old: Manifest) -> None:
        r = old.resume
        if r.token_offset:
            raise StateError(
                f"{self.out / MANIFEST} was written by an older codegpt that stopped "
                "inside a document; pass force=true to tokenize again"
            )
        old.listed_but_missing(self.out, "pass force=true to start over")
        self.position = Position(r.file_index, r.row_group, r.row)
        self.counts = Counts.of(old.counts)
        self.record.files_skipped = list(old.files_skipped)
        if self.seen is not None:
            self.seen.restore(r.dedup_digests)
        val_shards = len(old.shards["val"])
        self.docs.restore(val_shards, r.partial_docs, self.counts.tokens["val"])
        keep = {partial_path(self.out, val_shards)}
        for sb in self.splits:
            sb.shards = list(old.shards[sb.name])
            n = r.partial[sb.name]
            if n:
                sb.put(manifest.load_partial(self.out, sb.name, sb.index, n))
                keep.add(manifest.partial_path(self.out, sb.name, sb.index))
            sb.persisted = n
            # shards past the manifest's list were written after its last rewrite; they
            # are rewritten identically, but must not be mistaken for complete ones.
            listed = {e.name for e in sb.shards} | {e.docs for e in sb.shards}
            for q in self.out.glob(f"{sb.name}_*.npy"):
                if q.name not in listed:
                    q.unlink()
        manifest.remove_partials(self.out, keep)

    def complete_shards(self) -> int:
        return sum(sb.index for sb in self.splits)

    # ------------------------------------------------------------ consuming

    def consume(self, batch: BatchInfo, enc: Encoded) -> None:
        """Take one batch's encoding: its val documents' records and counts, then its tokens
        into the buffers, a shard written each time one fills; a checkpoint at the batch's
        end if any did."""
        if self.seen is not None:
            enc = self.seen.mark(enc)
        vrows = np.flatnonzero((enc.split == VAL) & (enc.ntok > 0))
        names = [batch.lang_names[c] for c in batch.lang[vrows]]
        self.docs.add(enc.ntok[vrows], enc.nbytes[vrows], names)  # before any val shard
        self.counts.add(batch, enc)
        filled = sum(self._put(sb, enc.tokens[s]) for s, sb in enumerate(self.splits))
        self.position = Position(batch.file_index, batch.row_group, batch.row + batch.num_rows)
        if filled:
            self._checkpoint()

    def _put(self, sb: SplitBuffer, tokens: np.ndarray) -> int:
        """Copy tokens into the split's buffer, writing a shard each time it fills."""
        written = 0
        while len(tokens):
            room = self.shard_tokens - sb.fill
            sb.put(tokens[:room])
            tokens = tokens[room:]
            if sb.fill == self.shard_tokens:
                self._write_shard(sb)
                written += 1
        return written

    def _checkpoint(self) -> None:
        """Make the resume state durable at a batch boundary: each split's unfinished buffer
        appended to its partial file, the open document records and the digests, then the
        manifest; then the partial files of the shards it lists as complete go."""
        for sb in self.splits:
            if sb.fill > sb.persisted:
                manifest.append_partial(
                    self.out, sb.name, sb.index, sb.buf[: sb.fill], sb.persisted
                )
                sb.persisted = sb.fill
        self.docs.persist()
        if self.seen is not None:
            self.seen.persist()
        self._write_manifest(complete=False)
        for p in self.finished_partials:
            p.unlink(missing_ok=True)
        self.finished_partials.clear()

    def _write_shard(self, sb: SplitBuffer) -> None:
        path = shards.write_shard(self.out, sb.name, sb.index, sb.buf[: sb.fill])
        docs = self.docs.write_shard(sb.fill) if sb.name == "val" else None
        sb.shards.append(ShardEntry(path.name, sb.fill, docs))
        self.finished_partials.append(manifest.partial_path(self.out, sb.name, sb.index - 1))
        if sb.name == "val":
            self.finished_partials.append(partial_path(self.out, sb.index - 1))
        log.debug("wrote %s (%d tokens)", path, sb.fill)
        sb.fill = sb.persisted = 0

    def skip_file(self, err: FileError) -> None:
        self.files_skipped.append(
            {
                "file": err.path,
                "row_group": err.row_group,
                "rows_not_read": err.rows_not_read,
                "error": err.message,
            }
        )

    # ------------------------------------------------------------ manifest

    def _write_manifest(self, complete: bool) -> None:
        assert self.counts.balanced(), f"accounting does not add up: {self.counts}"
        pos, m = self.position, self.record
        m.complete, m.counts = complete, self.counts
        m.shards = {sb.name: sb.shards for sb in self.splits}
        m.resume = Resume(
            pos.file_index,
            pos.row_group,
            pos.row,
            file=self.files[pos.file_index] if pos.file_index < len(self.files) else None,
        )
        if not complete:
            m.resume.partial = {sb.name: sb.persisted for sb in self.splits}
            m.resume.partial_docs = self.docs.persisted
            m.resume.dedup_digests = self.seen.persisted if self.seen is not None else 0
        write_manifest(self.out, m)

    def checkpoint_empty(self) -> None:
        self._write_manifest(complete=False)

    def finish(self) -> None:
        """Write each split's last (shorter) shard, then the complete manifest."""
        for sb in self.splits:
            if sb.fill:
                self._write_shard(sb)
        self.position = Position(len(self.files))
        self._write_manifest(complete=True)
        manifest.remove_partials(self.out)
        if self.seen is not None:
            self.seen.remove()
        written = {sb.name: sum(e.tokens for e in sb.shards) for sb in self.splits}
        assert written == self.counts.tokens, f"shards hold {written}, counted {self.counts.tokens}"
        if not self.splits[1].shards:
            log.warning("no document went to val (val_fraction too small for so few repositories)")
