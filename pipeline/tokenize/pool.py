"""The worker pool of the tokenize and dedup stages: batches in, results out, in input order.

At most 2 x workers batches are in flight: enough to keep every worker busy
while the main process copies results, few enough that memory stays bounded
by the batch size whatever the input size. Results are taken in submission
order, so the output is the same bytes for any worker count. With one worker
there is no pool: the same code runs in this process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from model.errors import ResourceError
from pipeline.tokenize.batches import Batch, FileError
from pipeline.tokenize.watchdog import MemoryWatchdog

Item = Batch | FileError
Pending = deque[tuple[Item, "Future[Any] | None"]]


@dataclass(frozen=True)
class Work:
    """What the workers run: `fn(batch)` (picklable: a module-level function or a partial
    of one), `warm_up(main_pid)` once per worker, and the module the forkserver preloads."""

    fn: Callable[[Batch], Any]
    warm_up: Callable[[int], None]
    module: str


def in_order(
    items: Iterator[Item], workers: int, work: Work, dog: MemoryWatchdog
) -> Generator[tuple[Item, Any], None, None]:
    """(item, work.fn(item)) in input order; a FileError passes through with None.

    A watchdog trip ends the wait for a result with BrokenProcessPool, as a
    worker killed by the OS does; closing the generator stops the pool at once.
    """
    if workers == 1:  # no pool: the same code path, in this process
        for item in items:
            yield item, (work.fn(item) if isinstance(item, Batch) else None)
        return
    pool = ProcessPoolExecutor(
        workers,
        mp_context=_context(work.module),
        initializer=work.warm_up,
        initargs=(os.getpid(),),
    )
    pending: Pending = deque()
    clean = False
    try:
        for item in items:
            fut = pool.submit(work.fn, item) if isinstance(item, Batch) else None
            pending.append((item, fut))
            while len(pending) >= 2 * workers:
                yield _next(pending, dog)
        while pending:
            yield _next(pending, dog)
        clean = True
    finally:
        _stop_pool(pool, clean)


def run_in_order(
    items: Iterator[Item], workers: int, work: Work, dog: MemoryWatchdog, hint: Callable[[], str]
) -> Generator[tuple[Item, Any], None, None]:
    """`in_order` for a stage's main loop: the watchdog checked after every result, and a
    dead pool (a worker killed by the OS, or by the watchdog) made one ResourceError line
    that ends with `hint()` (how to resume)."""
    try:
        # closing(): a failure in the caller must stop the pool now, not when collected
        with contextlib.closing(in_order(items, workers, work, dog)) as results:
            for item, result in results:
                dog.check(hint())
                yield item, result
    except BrokenProcessPool:
        dog.check(hint())
        raise ResourceError(
            "a worker process died (killed by the OS, out of memory?); "
            f"{hint()}, with fewer workers= if it happens again"
        ) from None
    dog.check(hint())


def _context(module: str) -> multiprocessing.context.BaseContext:
    """forkserver where there is one, else spawn; never a plain fork.

    The main process runs the watchdog thread, and forking a threaded process
    can copy a held lock into the child. A forkserver forks workers from a
    clean single-threaded process that has already imported the worker module
    (numpy, tiktoken): measured here, 0.3-0.7 s until two workers answer,
    against 0.7-1.2 s for spawn, for ~50 MB more resident memory in the tree.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([module])
        return ctx
    return multiprocessing.get_context("spawn")


def _next(pending: Pending, dog: MemoryWatchdog) -> tuple[Item, Any]:
    item, fut = pending.popleft()
    if fut is None:
        return item, None
    while True:
        try:
            return item, fut.result(timeout=0.2)
        except FutureTimeout:
            if dog.tripped is not None:  # the pool may respawn killed workers; do not wait
                raise BrokenProcessPool("memory watchdog tripped") from None


def _stop_pool(pool: ProcessPoolExecutor, clean: bool) -> None:
    """Stop at once: a clean stop must not wait for the batches still in flight."""
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
