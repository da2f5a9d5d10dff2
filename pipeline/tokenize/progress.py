"""The tokenize stage's progress line (every few seconds, on stderr) and its final summary."""

from __future__ import annotations

import logging
import time

from model import shards
from pipeline.tokenize.writer import Counts, ShardWriter

log = logging.getLogger(__name__)


class Progress:
    """A line on stderr every `every` seconds: documents, tokens, MB/s, tokens/s, ETA."""

    def __init__(self, total_bytes: int, counts: Counts, every: float) -> None:
        self.total_bytes = total_bytes
        self.every = every
        self.t0 = self.last = time.monotonic()
        self.bytes0 = counts.text_bytes
        self.tokens0 = sum(counts.tokens.values())

    def _rates(self, counts: Counts) -> tuple[float, float, float]:
        secs = max(time.monotonic() - self.t0, 1e-9)
        mb_s = (counts.text_bytes - self.bytes0) / secs / 1e6
        tok_s = (sum(counts.tokens.values()) - self.tokens0) / secs
        return secs, mb_s, tok_s

    def tick(self, writer: ShardWriter) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        c = writer.counts
        _, mb_s, tok_s = self._rates(c)
        left = max(self.total_bytes - c.text_bytes, 0)
        eta = f"{left / (mb_s * 1e6):.0f}s" if mb_s > 0 else "?"
        pct = 100.0 * c.text_bytes / self.total_bytes if self.total_bytes else 0.0
        log.info(
            "%s docs, %s tokens, %d shards, %.1f MB/s, %.2f M tokens/s, %.0f%%, ETA %s",
            f"{c.read:,}",
            f"{sum(c.tokens.values()):,}",
            writer.complete_shards(),
            mb_s,
            tok_s / 1e6,
            pct,
            eta,
        )

    def summary(self, writer: ShardWriter) -> str:
        c = writer.counts
        secs, mb_s, tok_s = self._rates(c)
        skipped = ", ".join(f"{k} {v:,}" for k, v in c.skipped.items() if v) or "none"
        n = {sb.name: sb.index for sb in writer.splits}
        files = (
            f"; unreadable files skipped: {len(writer.files_skipped)} (listed in {shards.MANIFEST})"
            if writer.files_skipped
            else ""
        )
        return (
            f"tokenize: {c.read:,} documents read = {c.tokenized:,} tokenized + "
            f"{sum(c.skipped.values()):,} skipped ({skipped}); {c.replaced_utf8:,} with invalid "
            f"UTF-8 replaced{files}; {c.tokens['train']:,} train tokens in {n['train']} shards, "
            f"{c.tokens['val']:,} val tokens in {n['val']} shards, in {writer.out} "
            f"({secs:.1f}s, {mb_s:.1f} MB/s, {tok_s / 1e6:.2f} M tokens/s)"
        )
