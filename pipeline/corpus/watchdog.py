"""A memory watchdog for the data stages: stop cleanly before the machine thrashes.

Why the whole process tree: the stage encodes in worker processes, and each
worker holds its own memory (a document's text; a Python list of token ids,
~36 bytes an id counting pointer and int object, where the shard needs 2). One
early run had 16 workers each holding such a list; together they asked for
160 GB on a 62 GB box, the machine swapped until it stopped answering and had
to be rebooted. No single
process looked large; only the sum did. So the limit `max_rss_gb` is checked
on the sum of resident memory over the stage's process and all its
descendants. Summed RSS counts pages shared after fork once per process, so
it over-states the real use a little: the watchdog errs towards stopping
early, never late. (PSS would be exact, but reading /proc/<pid>/smaps costs
tens of ms per process, too much for a sampler that must stay cheap.)

Why available memory too: the stage is not alone on the box (a training run,
a browser, another job). The stage's own memory may be modest while the
machine as a whole runs out, so `min_available_gb` is checked against the
kernel's estimate of memory that can be handed out without swapping
(`MemAvailable`). Inside a container started with `docker run --memory` the
kernel's figure is the host's, while the cgroup OOM killer acts at the
container's limit; `available_bytes` therefore also reads the cgroup's limit
and usage and takes the smaller headroom, so the watchdog stops first.

On a trip the watchdog kills the stage's descendants at once (they are the
encoding workers that hold the memory, and the main thread may be blocked
waiting on them; multiprocessing's forkserver and resource tracker are spared), logs one warning, and records the first `Trip`. It never
kills the process it watches: the caller sees the dead pool or `tripped`,
removes its temporaries, keeps every complete shard and exits non-zero with
`trip.message()`.

GB here are 2**30 bytes, the unit of `free -g` and of the config keys.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil

from model.errors import ResourceError

log = logging.getLogger(__name__)

GB = 2**30
# cgroup v1 writes "no limit" as a page-rounded 2**63; anything this large is no limit.
_NO_LIMIT = 2**60
_GONE = (psutil.NoSuchProcess, psutil.AccessDenied)


@dataclass(frozen=True)
class Trip:
    """One limit that was crossed: which figure, its value, the limit and the key that sets it."""

    figure: str  # "resident memory of the stage (N processes)" or "available memory of the machine"
    value_gb: float
    limit_gb: float
    key: str  # the config key: "max_rss_gb" or "min_available_gb"

    def message(self) -> str:
        """One line: the figure, its value, the limit and the key to change."""
        if self.key == "max_rss_gb":
            return (
                f"{self.figure} reached {self.value_gb:.2f} GB, over {self.key}={self.limit_gb:g}; "
                f"raise {self.key} if the machine has room, or lower workers"
            )
        return (
            f"{self.figure} fell to {self.value_gb:.2f} GB, under {self.key}={self.limit_gb:g}; "
            f"free memory on the machine, or lower {self.key} if it can spare more"
        )


# ---------------------------------------------------------------- measuring


def tree_rss(pid: int | None = None) -> tuple[int, int]:
    """(sum of RSS in bytes over the process and all its descendants, number of processes).

    Processes that vanish while being read (a worker that just exited) are skipped.
    One call reads /proc/<pid>/statm per process plus the parent map; a few ms.
    """
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except _GONE:
        return 0, 0
    total = count = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except _GONE:
            continue
        count += 1
    return total, count


def _read_int(path: Path) -> int | None:
    """An integer file of the cgroup fs; None when absent, unreadable or "max" (no limit)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _read_stat(path: Path, keys: tuple[str, ...]) -> dict[str, int]:
    """The named fields of a cgroup memory.stat file ("name value" lines)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name in keys and value.isdigit():
                out[name] = int(value)
    return out


@functools.lru_cache(maxsize=1)
def _cgroup_dirs() -> tuple[tuple[int, tuple[Path, ...]], ...]:
    """This process's memory cgroup folders, resolved once (membership does not change)."""
    try:
        own = Path("/proc/self/cgroup").read_text()
        mounts = Path("/proc/self/mountinfo").read_text()
    except OSError:  # not Linux, or /proc hidden: the kernel's figure alone
        return ()
    return memory_cgroups(own, mounts)


def memory_cgroups(own: str, mounts: str) -> tuple[tuple[int, tuple[Path, ...]], ...]:
    """The memory cgroup folders named by /proc/self/cgroup (`own`) and
    /proc/self/mountinfo (`mounts`): ((version, folders), ...).

    v2: the process's own folder and its ancestors up to the mount (a limit may
    sit on any of them). v1: the process's folder only, whose memory.stat
    already carries the effective `hierarchical_memory_limit`.
    """
    v1_path = v2_path = None
    for line in own.splitlines():  # "hierarchy-id:controllers:path"
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "":
            v2_path = parts[2]
        elif "memory" in parts[1].split(","):
            v1_path = parts[2]
    found: list[tuple[int, tuple[Path, ...]]] = []
    for line in mounts.splitlines():
        # "id parent major:minor root mountpoint opts [optional...] - fstype source superopts"
        fields, _, tail = line.partition(" - ")
        parts, sup = fields.split(), tail.split()
        if len(parts) < 5 or len(sup) < 3:
            continue
        root, mnt = parts[3], Path(parts[4])
        if sup[0] == "cgroup2" and v2_path is not None:
            leaf = _under(mnt, root, v2_path)
            found.append((2, (leaf, *(d for d in leaf.parents if mnt in (d, *d.parents)))))
        elif sup[0] == "cgroup" and v1_path is not None and "memory" in sup[2].split(","):
            found.append((1, (_under(mnt, root, v1_path),)))
    return tuple(found)


def _under(mnt: Path, root: str, path: str) -> Path:
    """The folder of cgroup `path` under a mount of cgroup `root`; the mount itself if absent.

    In a container with its own cgroup namespace both are "/"; without one the
    mount root is the container's cgroup and the path is relative to it.
    """
    rel = os.path.relpath(path, root) if path.startswith(root) else "."
    d = mnt if rel == "." else mnt / rel
    return d if d.is_dir() else mnt


def cgroup_headroom(version: int, folder: Path) -> int | None:
    """Bytes the cgroup `folder` can still charge before its OOM killer acts; None
    without a limit (or without the files: the controller is not enabled there).

    Usage counts the page cache, which the kernel drops before it OOM-kills; the
    reclaimable part (inactive file pages) is subtracted as `docker stats` does,
    else reading big parquet files would look like a leak.
    """
    if version == 2:
        limit = _read_int(folder / "memory.max")  # "max" -> None
        usage = _read_int(folder / "memory.current")
        cache = _read_stat(folder / "memory.stat", ("inactive_file",)).get("inactive_file", 0)
    else:
        # hierarchical_memory_limit is the smallest limit on the way to the root
        stat = _read_stat(
            folder / "memory.stat", ("hierarchical_memory_limit", "total_inactive_file")
        )
        limit = stat.get("hierarchical_memory_limit") or _read_int(folder / "memory.limit_in_bytes")
        usage = _read_int(folder / "memory.usage_in_bytes")
        cache = stat.get("total_inactive_file", 0)
    if limit is None or usage is None or limit >= _NO_LIMIT:
        return None
    return max(0, limit - max(0, usage - cache))


def _cgroup_headroom() -> int | None:
    """The smallest headroom over this process's memory cgroups; None without a limit."""
    rooms = [
        room
        for version, dirs in _cgroup_dirs()
        for d in dirs
        if (room := cgroup_headroom(version, d)) is not None
    ]
    return min(rooms, default=None)


def available_bytes() -> int:
    """Memory that can be handed out without swapping or an OOM kill, in bytes.

    The kernel's MemAvailable, or, inside a cgroup with a memory limit
    (`docker run --memory`), the cgroup's headroom when that is smaller.
    """
    avail = int(psutil.virtual_memory().available)
    room = _cgroup_headroom()
    return avail if room is None else min(avail, room)


# ---------------------------------------------------------------- acting


def _alive(p: psutil.Process) -> bool:
    """Running and not a zombie. Zombies are left for their parent to reap: reaping
    a multiprocessing worker here would hide its exit code from the pool."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except _GONE:
        return False


# multiprocessing's forkserver (its workers, its children, share its command line) and
# resource tracker, direct children of the main process: they hold none of the stage's
# memory, and killing them broke the pool's next worker start (EOFError) and flooded
# stderr with the relaunched tracker's tracebacks.
_HELPERS = (
    "from multiprocessing.forkserver import",
    "from multiprocessing.resource_tracker import",
)


def _helper(p: psutil.Process, parent: int) -> bool:
    """A multiprocessing helper of `parent` (see _HELPERS)."""
    try:
        line = " ".join(p.cmdline()) if p.ppid() == parent else ""
    except _GONE:
        return False
    return any(h in line for h in _HELPERS)


def kill_children(pid: int | None = None, timeout: float = 3.0) -> int:
    """SIGTERM, then after `timeout` s SIGKILL, every descendant of `pid` (not `pid`
    itself, nor multiprocessing's forkserver and resource tracker); returns how many
    were signalled. Does not reap (see `_alive`)."""
    parent = os.getpid() if pid is None else pid
    try:
        kids = [
            p for p in psutil.Process(parent).children(recursive=True) if not _helper(p, parent)
        ]
    except _GONE:
        return 0
    alive = kids
    for sig in ("terminate", "kill"):
        for p in alive:
            with contextlib.suppress(*_GONE):
                getattr(p, sig)()
        deadline = time.monotonic() + timeout
        while (alive := [p for p in alive if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not alive:
            break
    return len(kids)


class MemoryWatchdog:
    """Samples the stage's memory in a daemon thread; on a trip kills the workers.

        with MemoryWatchdog(cfg.max_rss_gb, cfg.min_available_gb) as dog:
            for result in pool_results:      # a dead pool ends this loop early
                dog.check()                  # ResourceError once a limit was crossed
                ...

    A limit <= 0 disables that check. `on_trip` runs in the sampling thread
    (or in the caller's, via `sample_now`) once, after the workers are killed.
    """

    def __init__(
        self,
        max_rss_gb: float,
        min_available_gb: float,
        interval: float = 0.2,
        pid: int | None = None,
        kill_on_trip: bool = True,
        on_trip: Callable[[Trip], None] | None = None,
        kill_timeout: float = 1.0,
    ) -> None:
        self.max_rss_gb = max_rss_gb
        self.min_available_gb = min_available_gb
        self.interval = interval
        self.pid = os.getpid() if pid is None else pid
        self.kill_on_trip = kill_on_trip
        self.on_trip = on_trip
        # short: the workers keep no state worth a graceful exit, and every second
        # of SIGTERM grace is a second more of a machine that may be swapping
        self.kill_timeout = kill_timeout
        self._max_rss = int(max_rss_gb * GB) if max_rss_gb > 0 else 0
        self._min_avail = int(min_available_gb * GB) if min_available_gb > 0 else 0
        self._trip: Trip | None = None
        self._peak = 0
        # memory the process tree holds outside every RSS (shared-memory segments nobody
        # maps); the caller sets it, and it counts towards max_rss_gb like the rest
        self.extra: Callable[[], int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def tripped(self) -> Trip | None:
        """The first limit crossed, or None."""
        return self._trip

    @property
    def peak_rss_bytes(self) -> int:
        """The largest summed RSS of the process tree seen so far."""
        return self._peak

    def check(self, hint: str = "") -> None:
        """Raise ResourceError (one line: the trip, then `hint`, e.g. how to resume) if tripped."""
        trip = self._trip
        if trip is not None:
            raise ResourceError(trip.message() + (f"; {hint}" if hint else ""))

    def sample_now(self) -> Trip | None:
        """One synchronous sample; the Trip it found (None if within limits)."""
        trip = None
        rss, nproc = tree_rss(self.pid)  # also with the limit off: the peak is reported
        extra = self.extra
        rss += extra() if extra is not None else 0
        self._peak = max(self._peak, rss)
        if self._max_rss and rss >= self._max_rss:
            figure = f"resident memory of the stage ({nproc} processes)"
            trip = Trip(figure, rss / GB, self.max_rss_gb, "max_rss_gb")
        if trip is None and self._min_avail:
            avail = available_bytes()
            if avail < self._min_avail:
                figure = "available memory of the machine"
                trip = Trip(figure, avail / GB, self.min_available_gb, "min_available_gb")
        if trip is not None:
            self._act(trip)
        return trip

    def _act(self, trip: Trip) -> None:
        """Record the first trip, kill the workers (on every trip: a pool respawns them)."""
        with self._lock:
            first = self._trip is None
            if first:
                self._trip = trip
        killed = kill_children(self.pid, self.kill_timeout) if self.kill_on_trip else 0
        if not first:
            return
        log.warning("memory watchdog: %s (stopped %d child processes)", trip.message(), killed)
        if self.on_trip is not None:
            self.on_trip(trip)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_now()
            except (psutil.Error, OSError) as e:  # e.g. /proc unreadable for a moment
                log.debug("memory watchdog: sample failed: %s", e)
            except Exception:  # an on_trip bug must not end the watching silently
                log.exception("memory watchdog: on_trip failed")
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryWatchdog:
        assert self._thread is None, "MemoryWatchdog is not reentrant"
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="memory-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
