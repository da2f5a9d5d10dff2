"""The tokenize stage's output side: shard buffers, exact resume state, the accounting.

`ShardWriter.consume` takes one batch's encoding (in input order) and copies
each split's tokens into that split's preallocated uint16 buffer of
`shard_tokens`. When a buffer is full it writes the shard and checkpoints:

  - the position: the document that supplied the shard's last token, as
    (file index, row group, row, token offset within the document);
  - the accounting of every document BEFORE that one;
  - the other split's partial buffer, which holds exactly the tokens of its
    documents before that one (made durable by pipeline.tokenize.manifest's partial
    files, appended, never rewritten).

A rerun reloads the partial buffers, reads from that document on, drops its
first `token offset` tokens, and so produces the same bytes as a run that was
never stopped. Events within one batch are taken in row order, so the other
split's buffer is always cut at the right document.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from model import shards
from model.errors import StateError
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
        self.shards: list[dict[str, Any]] = []

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
    def __init__(
        self,
        out: Path,
        shard_tokens: int,
        header: dict[str, Any],
        files: list[str],
        old: dict[str, Any] | None,
        exact_dedup: bool = True,
    ) -> None:
        self.out = out
        self.shard_tokens = shard_tokens
        self.header = header
        self.files = files
        self.splits = [SplitBuffer(name, shard_tokens, name == "train") for name in shards.SPLITS]
        self.counts = Counts()
        self.position = Position()
        self.files_skipped: list[dict[str, Any]] = []
        self.seen = Seen(out) if exact_dedup else None
        self.docs = DocIndex(out, shard_tokens)
        if old is not None:
            self._restore(old)
        out.mkdir(parents=True, exist_ok=True)

    def _restore(self, old: dict[str, Any]) -> None:
        p = old["position"]
        self.position = Position(p["file_index"], p["row_group"], p["row"], p["token_offset"])
        c = old["counts"]
        self.counts = Counts(**c)
        self.files_skipped = list(old.get("files_skipped", []))
        if self.seen is not None:
            self.seen.restore(int(old.get("dedup_digests", 0)))
        val_shards = len(old["shards"]["val"])
        self.docs.restore(val_shards, int(old.get("partial_docs", 0)), int(c["tokens"]["val"]))
        keep = {partial_path(self.out, val_shards)}
        for sb in self.splits:
            sb.shards = list(old["shards"][sb.name])
            for e in sb.shards:
                if not (self.out / e["name"]).is_file():
                    raise StateError(
                        f"{self.out / e['name']} is listed in {shards.MANIFEST} but missing; "
                        "pass force=true to start over"
                    )
            n = int(old["partial"][sb.name])
            if n:
                sb.put(manifest.load_partial(self.out, sb.name, sb.index, n))
                keep.add(manifest.partial_path(self.out, sb.name, sb.index))
            sb.persisted = n
            # shards past the manifest's list were written after its last rewrite; they
            # are rewritten identically, but must not be mistaken for complete ones.
            listed = {e["name"] for e in sb.shards} | {e["docs"] for e in sb.shards if "docs" in e}
            for q in self.out.glob(f"{sb.name}_*.npy"):
                if q.name not in listed:
                    q.unlink()
        manifest.remove_partials(self.out, keep)

    def complete_shards(self) -> int:
        return sum(sb.index for sb in self.splits)

    # ------------------------------------------------------------ consuming

    def consume(self, batch: BatchInfo, enc: Encoded, drop: int) -> None:
        """Copy one batch's tokens into the buffers, writing shards as they fill.

        `drop` > 0 only on the first batch of a resumed run: that many tokens of
        its first document are already in a shard.
        """
        fresh = np.empty(0, dtype=np.int64)  # rows whose digests joined the exact-dedup set
        if self.seen is not None:
            enc, fresh = self.seen.mark(enc)
        seen_before = self.seen.count - len(fresh) if self.seen is not None else 0
        ntok = enc.ntok.copy()
        tokens = list(enc.tokens)
        continues = bool(drop) and int(enc.split[0]) == VAL
        if drop:
            first = int(enc.split[0])
            assert ntok[0] >= drop, "resume position past the end of its document"
            ntok[0] -= drop
            tokens[first] = tokens[first][drop:]
        vrows = np.flatnonzero((enc.split == VAL) & (enc.ntok > 0))
        names = [batch.lang_names[c] for c in batch.lang[vrows]]
        first_id = self.docs.add(enc.ntok[vrows], enc.nbytes[vrows], names, continues)
        first_id -= int(continues)  # the id of vrows[0]'s record
        rows = [np.flatnonzero((enc.split == s) & (ntok > 0)) for s in range(2)]
        cums = [np.cumsum(ntok[r]) for r in rows]
        before = self.counts.copy()
        done = [0, 0]  # tokens of each split's batch stream already in a buffer
        for row, s, end, offset in self._events(rows, cums, ntok):
            self.splits[s].put(tokens[s][done[s] : end])
            done[s] = end
            o = 1 - s
            k = int(np.searchsorted(rows[o], row))  # documents of the other split before row
            upto = int(cums[o][k - 1]) if k else 0
            self.splits[o].put(tokens[o][done[o] : upto])
            done[o] = upto
            counts = before.copy()
            counts.add(batch, enc, row)
            at = Position(
                batch.file_index,
                batch.row_group,
                batch.row + row,
                offset + (drop if row == 0 else 0),
            )
            # the resume state holds the documents before `row`, and the record of `row`
            # itself when its val shard just filled (it goes on in the next shard)
            docs = first_id + int(np.searchsorted(vrows, row, side="right" if s == VAL else "left"))
            digests = seen_before + int(np.searchsorted(fresh, row))
            self._complete(s, at, counts, docs, digests)
        for s in range(2):
            self.splits[s].put(tokens[s][done[s] :])
        self.counts = before
        self.counts.add(batch, enc)

    def _events(
        self, rows: list[np.ndarray], cums: list[np.ndarray], ntok: np.ndarray
    ) -> list[tuple[int, int, int, int]]:
        """(row, split, end in the split's stream, token offset in the row) per full shard."""
        events = []
        for s in range(2):
            total = int(cums[s][-1]) if len(cums[s]) else 0
            end = self.shard_tokens - self.splits[s].fill
            while end <= total:
                k = int(np.searchsorted(cums[s], end))  # the document holding token end-1
                row = int(rows[s][k])
                start = int(cums[s][k]) - int(ntok[row])
                events.append((row, s, end, end - start))
                end += self.shard_tokens
        return sorted(events)

    def _complete(self, s: int, at: Position, counts: Counts, docs: int, digests: int) -> None:
        """Shard s is full: write it, make the resume state durable, checkpoint."""
        sb = self.splits[s]
        self._write_shard(sb)
        o = self.splits[1 - s]
        if o.fill > o.persisted:
            manifest.append_partial(self.out, o.name, o.index, o.buf[: o.fill], o.persisted)
            o.persisted = o.fill
        self.docs.persist(docs)
        if self.seen is not None:
            self.seen.persist(digests)
        self.position = at
        self._write_manifest(counts, complete=False)
        manifest.partial_path(self.out, sb.name, sb.index - 1).unlink(missing_ok=True)
        if sb.name == "val":
            self.docs.remove_partial(sb.index - 1)

    def _write_shard(self, sb: SplitBuffer) -> None:
        path = shards.write_shard(self.out, sb.name, sb.index, sb.buf[: sb.fill])
        entry: dict[str, Any] = {"name": path.name, "tokens": sb.fill}
        if sb.name == "val":
            entry["docs"] = self.docs.write_shard(sb.fill)
        sb.shards.append(entry)
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

    def _write_manifest(self, counts: Counts, complete: bool) -> None:
        assert counts.balanced(), f"accounting does not add up: {counts}"
        pos = self.position
        data = {
            "version": shards.MANIFEST_VERSION,
            "complete": complete,
            **self.header,
            "shards": {sb.name: sb.shards for sb in self.splits},
            "partial": {sb.name: 0 if complete else sb.persisted for sb in self.splits},
            "partial_docs": 0 if complete else self.docs.persisted,
            "dedup_digests": 0 if complete or self.seen is None else self.seen.persisted,
            "position": {
                "file_index": pos.file_index,
                "file": self.files[pos.file_index] if pos.file_index < len(self.files) else None,
                "row_group": pos.row_group,
                "row": pos.row,
                "token_offset": pos.token_offset,
            },
            "counts": counts.to_dict(),
            "files_skipped": self.files_skipped,
        }
        manifest.write(self.out, data)

    def checkpoint_empty(self) -> None:
        self._write_manifest(self.counts, complete=False)

    def finish(self) -> None:
        """Write each split's last (shorter) shard, then the complete manifest."""
        for sb in self.splits:
            if sb.fill:
                self._write_shard(sb)
        self.position = Position(len(self.files))
        self._write_manifest(self.counts, complete=True)
        manifest.remove_partials(self.out)
        if self.seen is not None:
            self.seen.remove()
        written = {sb.name: sum(e["tokens"] for e in sb.shards) for sb in self.splits}
        assert written == self.counts.tokens, f"shards hold {written}, counted {self.counts.tokens}"
        if not self.splits[1].shards:
            log.warning("no document went to val (val_fraction too small for so few repositories)")
