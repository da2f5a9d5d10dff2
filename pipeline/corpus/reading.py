"""The workers read the input; the main process only hands out row groups and row ranges.

A row group is decoded once, by one worker (`decode_group`): its text column
goes into a shared-memory segment (`/dev/shm`), and what is small per row
(text offsets, nulls, `repo_name`, language codes, the language filter) comes
back to the main process as a `Decoded`. A row group is the parquet file's own; a
JSON Lines file's groups are spans of its lines and a folder's file is one group of one
row (source.py). The main process cuts it into row
ranges of about `batch_bytes` of text (`ranges`) and hands each to any worker
as a `RangeTask`: the worker copies its range's bytes out of the segment and
has the `Batch` the stage's work function takes (`run_range`). When the
results of every range of a segment have been consumed, the main process
unlinks it (`release`).

Why this shape: pyarrow decodes a row group's column chunk as a whole (a
single 446 MB row group once peaked the stage at 826 MiB), so N workers each
decoding their own row group would hold N of them. Here a row group is
decoded once and shared by all the workers by row ranges, and the main
process admits a new one only while the segments in flight stay under a byte
budget (pool.py), or when none is in flight. The main process never touches
the text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.corpus.batches import Batch, BatchInfo, BinaryColumn, FileError, Reading

SHM_DIR = Path("/dev/shm")  # where Linux keeps the segments

# bytes per pyarrow batch while decoding: pyarrow's own transient grows with it (measured
# here on a 250 MB row group: ~110 MB at 200 rows a batch, ~330 MB at 2,000)
READ_BYTES = 1 << 20


@dataclass(frozen=True)
class Decoded:
    """A decoded row group (from `start_row` on), its text in shared memory segment `shm`."""

    info: BatchInfo  # file, group, first row, first file row, languages: all its rows
    shm: str
    offsets: np.ndarray  # (n + 1,) int64 into the segment
    null: np.ndarray  # (n,) bool
    repo: BinaryColumn
    keep: np.ndarray | None
    path: BinaryColumn
    skip: np.ndarray | None  # the reader's verdicts (batches.Batch.skip)

    @property
    def text_bytes(self) -> int:
        return int(self.offsets[-1])


@dataclass(frozen=True)
class RangeTask:
    """Rows [a, b) of a decoded row group, for one worker."""

    info: BatchInfo
    shm: str
    start: int  # byte range of the text in the segment
    end: int
    offsets: np.ndarray  # (b - a + 1,) from 0
    null: np.ndarray
    repo: BinaryColumn
    keep: np.ndarray | None
    near_dup: np.ndarray | None
    path: BinaryColumn
    skip: np.ndarray | None


class ShmFull(OSError):
    """/dev/shm has no room for a segment (raised in a worker, reported by the main)."""


# ---------------------------------------------------------------- worker side


def _attach(name: str) -> shared_memory.SharedMemory:
    # Before Python 3.13 attaching registers the segment with the resource tracker again.
    # That is harmless: the workers share the main process's tracker, a name is kept once,
    # and the main process's unlink (after every range's result is in, so after every
    # attach) removes it; unregistering here instead would race between workers.
    return shared_memory.SharedMemory(name=name)


def decode_group(
    path: Path,
    file_index: int,
    group: int,
    start_row: int,
    group_row: int,
    how: Reading,
    size_hint: int,
    name: str,
    members: tuple[str, ...] = (),
) -> Decoded | FileError:
    """Read row group `group` of `path` from `start_row` (`group_row`: the group's first row
    within the file; `members`: a folder's group's files); its text into a new segment called
    `name` (or `name.K` once grown K times: the main process picks the names, so that it can
    remove the segment of a decode it had to kill, `discard`)."""
    from pipeline.corpus import source  # pyarrow: only the processes that decode

    shm = _create(name, size_hint)
    pos, parts, grown = 0, [], 0
    try:
        for item in source.read_file(
            path,
            file_index,
            how,
            READ_BYTES,
            (group, start_row),
            groups=1,
            group_row=group_row,
            members=members,
        ):
            if isinstance(item, FileError):
                _drop(shm)
                return item
            data = item.text.data
            if pos + len(data) > shm.size:  # a dictionary-encoded column decodes larger
                grown += 1
                shm = _grow(shm, f"{name}.{grown}", pos, 2 * (pos + len(data)))
            _buf(shm)[pos : pos + len(data)] = data
            # keep what is small; the text itself lives in the segment only
            parts.append((dataclasses.replace(item, text=_no_data(item.text)), pos))
            pos += len(data)
        name = shm.name
    except BaseException:  # a full /dev/shm while growing, or any error: leave no segment
        with contextlib.suppress(FileNotFoundError):
            shm.unlink()
        raise
    finally:
        shm.close()
        # pyarrow's allocator (mimalloc) keeps the decoded pages (~170 MB for a 250 MB row
        # group) for reuse; between decodes a worker should not hold them
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    return _decoded(parts, name)


def _create(name: str, size: int) -> shared_memory.SharedMemory:
    """A new segment with its pages reserved: a full /dev/shm is an error here, not a
    SIGBUS later when a page is first written (tmpfs hands out pages lazily)."""
    shm = shared_memory.SharedMemory(name=name, create=True, size=max(size, 1))
    fd = getattr(shm, "_fd", -1)
    try:
        if fd >= 0 and hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, shm.size)
    except OSError as e:
        _drop(shm)
        free = _free(SHM_DIR)
        raise ShmFull(
            f"/dev/shm has {free / 2**20:.0f} MiB free, and a row group's text needs "
            f"{size / 2**20:.0f} MiB there ({e.strerror}): give it room (docker --shm-size, "
            "`make SHM=4g`), or rewrite the input with smaller row groups"
        ) from None
    return shm


def _free(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _buf(shm: shared_memory.SharedMemory) -> memoryview:
    buf = shm.buf
    assert buf is not None, "a closed segment"
    return buf


def _no_data(col: BinaryColumn) -> BinaryColumn:
    return BinaryColumn(col.offsets, b"", col.null)


def _drop(shm: shared_memory.SharedMemory) -> None:
    shm.close()
    shm.unlink()


def _grow(
    shm: shared_memory.SharedMemory, name: str, used: int, size: int
) -> shared_memory.SharedMemory:
    bigger = _create(name, size)
    _buf(bigger)[:used] = _buf(shm)[:used]
    _drop(shm)
    return bigger


def _decoded(parts: list[tuple[Batch, int]], name: str) -> Decoded:
    """One Decoded from the row group's batches (their text already in the segment)."""
    assert parts, "a decode starts at a row its row group has (pool._Groups._walk)"
    first = parts[0][0]
    names: list[str] = []
    codes: list[np.ndarray] = []
    offsets, nulls, repos, paths = [np.zeros(1, np.int64)], [], [], []
    keeps: list[np.ndarray] = []
    skips: list[np.ndarray] = []
    for batch, pos in parts:
        remap = np.array([_code(names, n) for n in batch.lang_names], dtype=np.int32)
        codes.append(remap[batch.lang])
        offsets.append(batch.text.offsets[1:] + pos)
        nulls.append(batch.text.null)
        repos.append(batch.repo)
        paths.append(batch.path or BinaryColumn.of([None] * batch.num_rows))
        if batch.keep is not None:
            keeps.append(batch.keep)
        skips.append(batch.skip if batch.skip is not None else np.zeros(batch.num_rows, np.int8))
    info = BatchInfo(
        file_index=first.file_index,
        row_group=first.row_group,
        row=first.row,
        file_row=first.file_row,
        lang=np.concatenate(codes),
        lang_names=tuple(names),
    )
    keep = np.concatenate(keeps) if keeps else None
    skip = np.concatenate(skips) if any(b.skip is not None for b, _ in parts) else None
    return Decoded(
        info,
        name,
        np.concatenate(offsets),
        _cat(nulls, bool),
        _join(repos),
        keep,
        _join(paths),
        skip,
    )


def _code(names: list[str], name: str) -> int:
    if name not in names:
        names.append(name)
    return names.index(name)


def _cat(arrays: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=dtype)


def _join(cols: list[BinaryColumn]) -> BinaryColumn:
    if not cols:
        return BinaryColumn(np.zeros(1, np.int64), b"", np.empty(0, bool))
    offsets, base = [np.zeros(1, np.int64)], 0
    for c in cols:
        offsets.append(c.offsets[1:] + base)
        base += len(c.data)
    return BinaryColumn(
        np.concatenate(offsets), b"".join(c.data for c in cols), _cat([c.null for c in cols], bool)
    )


def run_range(task: RangeTask, fn: Any) -> Any:
    """Worker side: the Batch of a range (its text copied out of the segment), then fn.

    The result comes back pickled. Tried and measured on the built-in sample (2 workers,
    3 runs each): the tokens through a segment instead (mmap'd by the main process, views
    into the shard buffer) left the main process's CPU where it was (1.38 vs 1.40 s): the
    pipe and the unpickling cost it ~0.03 ms per 0.9 MB batch, the segment ~0.3 ms.
    """
    shm = _attach(task.shm)
    try:
        data = bytes(_buf(shm)[task.start : task.end])
    finally:
        shm.close()
    batch = Batch(
        info=task.info,
        text=BinaryColumn(task.offsets, data, task.null),
        repo=task.repo,
        keep=task.keep,
        near_dup=task.near_dup,
        path=task.path,
        skip=task.skip,
    )
    return fn(batch)


# ---------------------------------------------------------------- main side


def ranges(d: Decoded, batch_bytes: int) -> list[tuple[int, int]]:
    """Row ranges [a, b) of about batch_bytes of text each (at least one row each)."""
    n = len(d.null)
    out, a = [], 0
    while a < n:
        target = d.offsets[a] + batch_bytes
        b = int(np.searchsorted(d.offsets, target, side="right")) - 1
        b = min(max(b, a + 1), n)
        out.append((a, b))
        a = b
    return out


def task(d: Decoded, a: int, b: int, near_dup: np.ndarray | None) -> RangeTask:
    info = BatchInfo(
        file_index=d.info.file_index,
        row_group=d.info.row_group,
        row=d.info.row + a,
        file_row=d.info.file_row + a,
        lang=d.info.lang[a:b],
        lang_names=d.info.lang_names,
    )
    o = d.offsets
    return RangeTask(
        info=info,
        shm=d.shm,
        start=int(o[a]),
        end=int(o[b]),
        offsets=o[a : b + 1] - o[a],
        null=d.null[a:b],
        repo=_slice(d.repo, a, b),
        keep=None if d.keep is None else d.keep[a:b],
        near_dup=near_dup,
        path=_slice(d.path, a, b),
        skip=None if d.skip is None else d.skip[a:b],
    )


def _slice(col: BinaryColumn, a: int, b: int) -> BinaryColumn:
    lo, hi = int(col.offsets[a]), int(col.offsets[b])
    return BinaryColumn(col.offsets[a : b + 1] - lo, col.data[lo:hi], col.null[a:b])


def release(name: str) -> None:
    """Unlink a segment whose every range has been consumed."""
    with contextlib.suppress(FileNotFoundError):
        shm = shared_memory.SharedMemory(name=name)
        shm.close()
        shm.unlink()  # also unregisters it from the resource tracker


# each growth doubles the segment, from the text column's uncompressed size: 40 covers any
MAX_GROWTHS = 40


def discard(name: str) -> None:
    """Remove whatever a decode called `name` left, once its worker is stopped: the segment
    and any grown copy (a killed decode's segment would otherwise outlive the run, and
    the resource tracker would warn on stderr at exit)."""
    release(name)
    for k in range(1, MAX_GROWTHS + 1):
        release(f"{name}.{k}")
