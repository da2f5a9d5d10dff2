"""One writer per output folder: an advisory lock on `<folder>/.lock`.

`with exclusive(folder, "train"):` takes `fcntl.flock(LOCK_EX | LOCK_NB)` on
the lock file and writes its pid and role into it. A second writer (another
`make train` on the same run, the compose trainer and a `make train` by
hand, two tokenize runs into one shard folder) fails at once with one line
naming the holder. The kernel drops the lock when the holding process ends,
however it ends, so a SIGKILL never leaves a stale lock behind; the file
itself stays (an unlocked file means nothing).

The lock is a local-filesystem lock: on NFS, flock is emulated per client
and two machines may not see each other's locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from model.errors import StateError

LOCK_FILE = ".lock"


def holder(folder: str | Path) -> str:
    """What the lock file says about its holder ("pid 123 (train)"), or "unknown"."""
    try:
        text = (Path(folder) / LOCK_FILE).read_text(encoding="utf-8").split()
    except OSError:
        return "unknown"
    if len(text) >= 2 and text[0].isdigit():
        return f"pid {text[0]} ({' '.join(text[1:])})"
    return "unknown"


@contextlib.contextmanager
def exclusive(folder: str | Path, role: str) -> Iterator[Path]:
    """Hold `<folder>/.lock` for the block; StateError at once if another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(
                f"{folder} is in use by another process ({holder(folder)}); "
                "wait for it to finish or stop it, or use another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {role}\n".encode())
        yield path
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
