"""The clock of the stages' progress lines (no torch: the tokenize and dedup stages use it)."""

from __future__ import annotations

import time


class Ticker:
    """A stage's progress line: due() once every `every` seconds; the rate since it began
    (work a resumed run did before it began not counted) and the time left at that rate."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.t0 = self.last = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.every:
            return False
        self.last = now
        return True

    def rate(self, done: float) -> float:
        """`done` (since the start) per second."""
        return done / max(time.monotonic() - self.t0, 1e-9)

    def eta(self, done: float, left: float) -> str:
        """Seconds for `left` at the rate of `done`, as "42s" ("?" before any progress)."""
        rate = self.rate(done)
        return f"{max(left, 0) / rate:.0f}s" if rate > 0 else "?"
