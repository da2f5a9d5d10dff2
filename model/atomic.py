"""Durable, all-or-nothing file writes: the one way every output reaches its final name.

`write_atomically(final, write)` lets `write` fill a temporary file, flushes
and fsyncs it, renames it over `final` and fsyncs the folder, so a crash at
any instant leaves either the old file or the new one, never a partial file
under the final name. On any failure (a full disk included) the temporary
file is removed and the error propagates.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from model.errors import CodegptError, InputError, ResourceError, StateError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no room: free space, then rerun


def write_error(e: OSError, out: Path, kept: str) -> CodegptError:
    """An OSError while writing into `out` as the one-line error a stage exits with: a
    full disk is a resource stop (exit 3; `kept` says what stays for the rerun to resume
    from), anything else a folder that cannot be written."""
    where = e.filename or str(out)
    if e.errno in DISK_FULL:
        return ResourceError(
            f"disk full writing {where} ({e.strerror}); {kept}: "
            "free space, then rerun the same command to resume"
        )
    return StateError(f"cannot write {where} ({e.strerror}); fix the output folder and rerun")


def fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the directory entry (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(
    final: Path, write: Callable[[IO[bytes]], object], tmp: Path | None = None
) -> Path:
    """Write `final` through `tmp` (default `<final>.tmp`, same folder): write, fsync, rename."""
    final = Path(final)
    tmp = tmp if tmp is not None else final.with_name(final.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
    return final


def write_text(final: Path, text: str) -> Path:
    """`final` holds `text` (UTF-8), all or nothing; its folder is created if needed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    return write_atomically(final, lambda f: f.write(data))


def read_json_state(path: Path, version: int, kind: str, fix: str) -> dict[str, Any] | None:
    """A state file that write_text wrote: its JSON object, None when there is none; an
    unreadable one, or one of another version, is one InputError line ending in `fix`."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable {kind} ({e}); {fix}") from None
    if not isinstance(data, dict) or data.get("version") != version:
        raise InputError(f"{path}: not a version-{version} {kind}; {fix}")
    return data
