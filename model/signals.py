"""Stop requests (SIGTERM from `docker stop`, SIGINT from Ctrl-C) as a flag.

The handler only records the request; the training loop looks at the flag at
each step boundary, writes a checkpoint and returns. Nothing is torn down
half-way through an optimizer step. A second Ctrl-C while the first is being
honoured raises KeyboardInterrupt, for a user who really wants out now.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
    """Context manager: installs the handlers on entry, restores the old ones on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "%s received: checkpointing at the end of this step, then stopping",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            for s in _SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
