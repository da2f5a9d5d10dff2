"""The worker pool of the tokenize and dedup stages: row groups in, results out, in input order.

`read_in_order` walks the input's row groups from a start position. A worker
decodes each row group into shared memory (reading.py); the main process
cuts it into row ranges and hands them to the workers, which run the stage's
work function (encode, or sign) on each. Results are taken strictly in input
order, so the output is the same bytes for any worker count. The main
process reads no input and never touches the text: it sends small tasks,
receives results, and unlinks a segment once its last range is consumed.

Bounds: at most 2 x workers ranges in flight beyond the decoded row groups,
and decoded row groups (segments) only while their text bytes stay under
`budget` (or when none is in flight: a row group larger than the budget is
still read, alone). So memory does not grow with the input, and a single
huge row group is read once, not once per worker. With one worker there is
no pool: each call runs in this process and comes back as a finished Future
(its result, or the exception it raised, met at `.result()` where a pool's
would be), so the reading code is the same for any worker count.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ResourceError
from pipeline.corpus import reading
from pipeline.corpus.batches import Batch, BatchInfo, FileError, Position, Reading
from pipeline.corpus.watchdog import MemoryWatchdog

Item = BatchInfo | FileError


@dataclass(frozen=True)
class Work:
    """What the workers run: `fn(batch)` (picklable: a module-level function or a partial
    of one), `warm_up(main_pid)` once per worker, and the module the forkserver preloads."""

    fn: Callable[[Batch], Any]
    warm_up: Callable[[int], None]
    module: str
    preload: tuple[str, ...] = ("pipeline.corpus.source",)  # pyarrow, for the decoding


@dataclass(frozen=True)
class Source:
    """The input as the reading needs it: files, their row groups, how to read them."""

    files: list[Path]
    groups: list[list[tuple[int, int]] | str]  # per file (rows, text bytes) per group, or its error
    how: Reading
    batch_bytes: int
    budget: int  # text bytes of the decoded row groups in flight
    mark: Callable[[BatchInfo], np.ndarray | None] | None = None  # the near-dedup mask
    members: list[list[tuple[str, ...]] | None] | None = None  # a folder's files per group

    @functools.cached_property
    def first_rows(self) -> list[np.ndarray]:
        """Per file, each row group's first row within the file (none for an unreadable one)."""
        return [
            np.zeros(0, np.int64)
            if isinstance(layout, str)
            else np.concatenate([[0], np.cumsum([rows for rows, _ in layout], dtype=np.int64)])
            for layout in self.groups
        ]


@dataclass(frozen=True)
class _Group:
    """A row group to read: row group `group` of file `file_index` from `row`."""

    file_index: int
    group: int
    row: int
    text_bytes: int  # of the whole row group, as its footer says


@dataclass(frozen=True)
class _Decode:
    """A row group decoding (or a FileError passed on in its place, with no segment)."""

    file_index: int
    segment: str | None  # the name the decode's segment is created under
    text_bytes: int  # counted in _Flow.inflight until released
    future: Future[Any]  # a reading.Decoded or a FileError


@dataclass(frozen=True)
class _Range:
    """One result to hand out, in input order: a row range's, or a FileError's."""

    item: Item
    future: Future[Any]  # work.fn's result on the range (None for a FileError)
    segment: str | None  # the decoded segment the range reads, None for a FileError


@dataclass
class _Flow:
    """The state of one read: queued decodes, ranges in flight, live segments."""

    decodes: deque[_Decode] = field(default_factory=deque)
    pending: deque[_Range] = field(default_factory=deque)
    live: dict[str, int] = field(default_factory=dict)  # segment -> ranges not yet consumed
    inflight: int = 0  # text bytes of the row groups decoding or decoded, not yet released
    sizes: dict[str, int] = field(default_factory=dict)
    names: int = 0  # segments named so far

    def name(self) -> str:
        """A segment name of this run: the main process's pid and a counter."""
        self.names += 1
        return f"codegpt-{os.getpid()}-{self.names}"


def read_in_order(
    src: Source,
    start: Position,
    workers: int,
    work: Work,
    dog: MemoryWatchdog,
    hint: Callable[[], str],
) -> Generator[tuple[Item, Any], None, None]:
    """(batch info or FileError, work.fn(batch) or None) in input order, from `start`.

    The watchdog is checked after every result; a dead pool (a worker killed by the OS or
    by the watchdog) is one ResourceError line that ends with `hint()` (how to resume).
    """
    pool = _Pool(workers, work)
    flow = _Flow()
    dog.extra = lambda: flow.inflight  # shared memory is in no process's RSS once unmapped
    groups = _groups(src, start)
    clean = False
    try:
        while True:
            _admit(src, flow, groups, pool)
            while flow.decodes and (flow.decodes[0].future.done() or not flow.pending):
                if len(flow.pending) >= 2 * max(workers, 1):
                    break
                _unfold(src, flow, pool, dog, groups)
            if not flow.pending:
                if not flow.decodes and groups.exhausted:
                    break
                continue
            rng = flow.pending.popleft()
            result = _result(rng.future, dog)
            dog.check(hint())
            yield rng.item, result
            _consumed(flow, rng.segment)
        clean = True
    except reading.ShmFull as e:
        raise ResourceError(f"{e}; {hint()}") from None
    except BrokenProcessPool:
        dog.check(hint())
        raise ResourceError(
            "a worker process died (killed by the OS, out of memory?); "
            f"{hint()}, with fewer workers= if it happens again"
        ) from None
    finally:
        pool.stop(clean)
        _release_all(flow)
        dog.extra = None
    dog.check(hint())


class _Groups:
    """The row groups to read, in input order, from a start position."""

    def __init__(self, src: Source, start: Position) -> None:
        self.it = self._walk(src, start)
        self.next: _Group | FileError | None = next(self.it, None)

    @property
    def exhausted(self) -> bool:
        return self.next is None

    def pop(self) -> _Group | FileError:
        assert self.next is not None
        item, self.next = self.next, next(self.it, None)
        return item

    def skip_file(self, file_index: int) -> None:
        while isinstance(self.next, _Group) and self.next.file_index == file_index:
            self.pop()

    @staticmethod
    def _walk(src: Source, start: Position) -> Iterator[_Group | FileError]:
        for fi in range(start.file_index, len(src.files)):
            layout = src.groups[fi]
            if isinstance(layout, str):  # unreadable: its error, in its place
                yield FileError(fi, str(src.files[fi]), 0, None, layout)
                continue
            first = start.row_group if fi == start.file_index else 0
            for g in range(first, len(layout)):
                row = start.row if (fi, g) == (start.file_index, start.row_group) else 0
                rows, nbytes = layout[g]
                if row < rows:
                    yield _Group(fi, g, row, nbytes)


def _groups(src: Source, start: Position) -> _Groups:
    return _Groups(src, start)


def _admit(src: Source, flow: _Flow, groups: _Groups, pool: _Pool) -> None:
    """Queue decodes while the decoded bytes in flight stay under the budget."""
    while not groups.exhausted and len(flow.decodes) < 2 * pool.workers:
        nxt = groups.next
        if isinstance(nxt, _Group):
            busy = flow.inflight > 0 or flow.decodes
            if busy and flow.inflight + nxt.text_bytes > src.budget:
                return
        item = groups.pop()
        if isinstance(item, FileError):
            flow.decodes.append(_Decode(item.file_index, None, 0, _finished(item)))
            continue
        fi, g = item.file_index, item.group
        name = flow.name()
        fut = pool.submit(
            reading.decode_group,
            src.files[fi],
            fi,
            g,
            item.row,
            _first_row(src, fi, g),
            src.how,
            item.text_bytes + 1024,
            name,
            _members(src, fi, g),
        )
        flow.decodes.append(_Decode(fi, name, item.text_bytes, fut))
        flow.inflight += item.text_bytes


def _first_row(src: Source, fi: int, g: int) -> int:
    """Row group g's first row within file fi (a JSON Lines group does not know its own)."""
    return int(src.first_rows[fi][g])


def _members(src: Source, fi: int, g: int) -> tuple[str, ...]:
    """The files of a folder's row group g (a table file's groups have none)."""
    per_group = src.members[fi] if src.members else None
    return per_group[g] if per_group else ()


def _next_decode(flow: _Flow, dog: MemoryWatchdog) -> tuple[Any, int]:
    """The oldest decode's result and its bytes. It leaves flow.decodes only once its result
    is in: should waiting fail (a dead pool, a worker's error), _release_all still finds
    its segment by name."""
    oldest = flow.decodes[0]
    d = _result(oldest.future, dog)
    flow.decodes.popleft()
    return d, oldest.text_bytes


def _unfold(src: Source, flow: _Flow, pool: _Pool, dog: MemoryWatchdog, groups: _Groups) -> None:
    """The oldest decode's result: its ranges handed out, or its FileError passed on."""
    d, nbytes = _next_decode(flow, dog)
    if isinstance(d, FileError):
        flow.inflight -= nbytes
        flow.pending.append(_Range(d, _finished(None), None))
        groups.skip_file(d.file_index)
        while flow.decodes and flow.decodes[0].file_index == d.file_index:  # the rest of it
            extra, more = _next_decode(flow, dog)
            flow.inflight -= more
            if isinstance(extra, reading.Decoded):
                reading.release(extra.shm)
        return
    spans = reading.ranges(d, src.batch_bytes)
    assert spans, "a decode starts at a row its row group has (_Groups._walk)"
    flow.sizes[d.shm] = nbytes
    flow.live[d.shm] = len(spans)
    for a, b in spans:
        t = reading.task(d, a, b, None)
        if src.mark is not None:
            t = dataclasses.replace(t, near_dup=src.mark(t.info))
        flow.pending.append(_Range(t.info, pool.submit(reading.run_range, t, pool.work.fn), d.shm))


def _release_all(flow: _Flow) -> None:
    """Unlink every segment still held, once the workers are stopped: those being cut, and
    those of the decodes still queued, done or killed half way (by their names)."""
    for seg in set(flow.live) | {r.segment for r in flow.pending if r.segment}:
        reading.release(seg)
    for dec in flow.decodes:
        if dec.segment:
            reading.discard(dec.segment)


def _consumed(flow: _Flow, seg: str | None) -> None:
    if seg is None:
        return
    flow.live[seg] -= 1
    if flow.live[seg] == 0:
        del flow.live[seg]
        flow.inflight -= flow.sizes.pop(seg)
        reading.release(seg)


def _finished(value: Any) -> Future[Any]:
    """A Future already holding `value` (a FileError passed on, or a FileError's None)."""
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


def _inline(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """fn(*args) run here, as a finished Future: its result, or the Exception it raised, which
    `.result()` raises where a pool's would. KeyboardInterrupt and the like are not kept."""
    fut: Future[Any] = Future()
    try:
        fut.set_result(fn(*args))
    except Exception as e:
        fut.set_exception(e)
    return fut


def _result(fut: Future[Any], dog: MemoryWatchdog) -> Any:
    while True:
        try:
            return fut.result(timeout=0.2)
        except FutureTimeout:
            if dog.tripped is not None:  # the pool may respawn killed workers; do not wait
                raise BrokenProcessPool("memory watchdog tripped") from None


class _Pool:
    """A process pool, or (one worker) calls in this process: a Future either way."""

    def __init__(self, workers: int, work: Work) -> None:
        self.workers, self.work = workers, work
        self.executor: ProcessPoolExecutor | None = None
        if workers > 1:
            self.executor = ProcessPoolExecutor(
                workers,
                mp_context=_context([work.module, *work.preload]),
                initializer=work.warm_up,
                initargs=(os.getpid(),),
            )
        else:
            work.warm_up(0)  # what a worker builds once, here (no parent to watch)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self.executor is None:
            return _inline(fn, *args)
        try:
            return self.executor.submit(fn, *args)
        except (EOFError, OSError) as e:  # a worker could not start: its forkserver is gone
            raise BrokenProcessPool(f"could not start a worker ({e!r})") from None

    def stop(self, clean: bool) -> None:
        """Stop at once: a clean stop must not wait for the work still in flight."""
        pool = self.executor
        if pool is None:
            return
        if clean:
            pool.shutdown(wait=True)
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(timeout=5)


def _context(modules: list[str]) -> multiprocessing.context.BaseContext:
    """forkserver where there is one, else spawn; never a plain fork.

    The main process runs the watchdog thread, and forking a threaded process
    can copy a held lock into the child. A forkserver forks workers from a
    clean single-threaded process that has already imported the worker module
    (numpy, tiktoken): measured here, 0.3-0.7 s until two workers answer,
    against 0.7-1.2 s for spawn, for ~50 MB more resident memory in the tree.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(modules)
        return ctx
    return multiprocessing.get_context("spawn")
