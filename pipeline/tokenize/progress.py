"""The tokenize stage's progress line (every few seconds, on stderr) and its final summary."""

from __future__ import annotations

import logging
import time

from model import manifest
from model.progress import Ticker
from pipeline.tokenize.counts import Counts
from pipeline.tokenize.writer import ShardWriter

log = logging.getLogger(__name__)


class Progress:
    """A line on stderr every `every` seconds: documents, tokens, MB/s, tokens/s, ETA."""

    def __init__(self, total_bytes: int, counts: Counts, every: float) -> None:
        self.total_bytes = total_bytes
        self.ticker = Ticker(every)
        self.bytes0 = counts.text_bytes
        self.tokens0 = sum(counts.tokens.values())

    def _rates(self, counts: Counts) -> tuple[float, float, float]:
        secs = max(time.monotonic() - self.ticker.t0, 1e-9)
        mb_s = (counts.text_bytes - self.bytes0) / secs / 1e6
        tok_s = (sum(counts.tokens.values()) - self.tokens0) / secs
        return secs, mb_s, tok_s

    def tick(self, writer: ShardWriter) -> None:
        if not self.ticker.due():
            return
        c = writer.counts
        _, mb_s, tok_s = self._rates(c)
        eta = self.ticker.eta(c.text_bytes - self.bytes0, self.total_bytes - c.text_bytes)
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
        """The stage's last lines: the accounting, what each rule removed, the languages."""
        c = writer.counts
        secs, mb_s, tok_s = self._rates(c)
        skipped = ", ".join(f"{k} {v:,}" for k, v in c.skipped.items() if v) or "none"
        n = {sb.name: sb.index for sb in writer.splits}
        files = (
            f"; unreadable files skipped: {len(writer.files_skipped)} (listed in {manifest.MANIFEST})"
            if writer.files_skipped
            else ""
        )
        first = (
            f"tokenize: {c.read:,} documents read = {c.tokenized:,} tokenized + "
            f"{sum(c.skipped.values()):,} skipped ({skipped}); {c.replaced_utf8:,} with invalid "
            f"UTF-8 replaced{files}; {c.tokens['train']:,} train tokens in {n['train']} shards, "
            f"{c.tokens['val']:,} val tokens in {n['val']} shards, in {writer.out} "
            f"({secs:.1f}s, {mb_s:.1f} MB/s, {tok_s / 1e6:.2f} M tokens/s)"
        )
        name = str(writer.record.tokenizer.get("name", "gpt2"))
        return "\n".join([first, *summary_lines(c, name)])


def rule_shares(counts: manifest.Counts) -> str:
    """What each rule removed, as shares of the documents read ("duplicate 2.3 %, ...")."""
    read = max(counts.read, 1)
    removed = [(k, v) for k, v in counts.skipped.items() if v]
    return ", ".join(f"{k} {100 * v / read:.1f} %" for k, v in removed) or "nothing"


def _by_language(counts: manifest.Counts) -> dict[str, list[int]]:
    """name -> [documents, tokens, bytes], train and val together."""
    langs: dict[str, list[int]] = {}
    for split in counts.languages.values():
        for name, d in split.items():
            acc = langs.setdefault(name, [0, 0, 0])
            acc[0] += d["documents"]
            acc[1] += d["tokens"]
            acc[2] += d.get("bytes", 0)
    return langs


def bytes_per_token(counts: manifest.Counts, top: int = 8) -> str:
    """UTF-8 bytes per token of the biggest languages, then of all: what the tokenizer
    costs (a token is one step of compute; each end-of-text is a token with no bytes)."""
    langs = sorted(_by_language(counts).items(), key=lambda kv: -kv[1][1])
    parts = [f"{name} {b / t:.2f}" for name, (_, t, b) in langs[:top] if t]
    tokens = sum(t for _, t, _ in (v for _, v in langs))
    total = sum(b for _, _, b in (v for _, v in langs))
    return ", ".join([*parts, f"all {total / tokens:.2f}"]) if tokens else "none"


def top_languages(counts: manifest.Counts, top: int = 8) -> str:
    """The languages by tokens, train and val together, with their shares and documents."""
    langs = {name: v[:2] for name, v in _by_language(counts).items()}
    total = max(sum(t for _, t in langs.values()), 1)
    ranked = sorted(langs.items(), key=lambda kv: -kv[1][1])
    shown = ", ".join(
        f"{name} {t:,} ({100 * t / total:.1f} %, {d:,} docs)" for name, (d, t) in ranked[:top]
    )
    more = f", and {len(ranked) - top} more" if len(ranked) > top else ""
    return (shown or "none") + more


def summary_lines(counts: manifest.Counts, tokenizer: str = "gpt2") -> list[str]:
    """The tokenize summary's lines about the rules and the languages."""
    return [
        f"tokenize: removed, as a share of the documents read: {rule_shares(counts)}",
        f"tokenize: tokens by language: {top_languages(counts)}",
        f"tokenize: bytes per token ({tokenizer}): {bytes_per_token(counts)}",
    ]
