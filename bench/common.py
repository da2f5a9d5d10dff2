"""What the process benchmarks share: the peak memory of a process tree, timing a command,
and a one-line description of the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


SHM = Path("/dev/shm")


def _rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process less its shared-memory pages, bytes; those are counted once,
    below, through what /dev/shm holds. (0, 0) when the process is gone."""
    f: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            f[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    shmem = 0  # smaps_rollup has no shared-memory RSS line: the status file does
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssShmem:"):
                shmem = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return f.get("Rss", 0) - shmem, f.get("Pss", 0) - f.get("Pss_Shmem", 0)


def shm_used() -> int:
    """Bytes in /dev/shm (a tmpfs: RAM) now; 0 where there is none."""
    try:
        st = os.statvfs(SHM)
    except OSError:
        return 0
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class PeakRSS:
    """Samples the memory of a process tree in a thread; `.peak` in bytes. Memory = the RSS
    of every process less its shared-memory pages, plus what /dev/shm holds beyond what it
    held at the start: a segment no process maps is RAM too, and one several map is
    counted once. RSS counts a page that forked processes share once in each of them, so
    the sum is an upper bound; `.peak_pss` sums the proportional set size instead (a page
    shared by k processes counts 1/k in each): what the tree really holds. Also keeps each process's CPU seconds as last seen (`main_cpu`: the
    root's; `other_cpu`: the rest's), which misses at most one interval of each."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
        self.peak_procs = 0
        self.cpu: dict[int, float] = {}
        self.shm_base = shm_used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = pss = max(0, shm_used() - self.shm_base)
            for p in procs:
                rss, share = _rollup(p.pid)
                total, pss = total + rss, pss + share
                with contextlib.suppress(psutil.NoSuchProcess):  # a worker that just exited
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
            if total > self.peak:
                self.peak, self.peak_procs = total, len(procs)
            self.peak_pss = max(self.peak_pss, pss)
            self._stop.wait(self.interval)

    @property
    def main_cpu(self) -> float:
        return self.cpu.get(self.proc.pid, 0.0)

    @property
    def other_cpu(self) -> float:
        return sum(v for k, v in self.cpu.items() if k != self.proc.pid)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Measured:
    wall: float  # seconds
    peak: int  # the tree's largest memory (PeakRSS), bytes
    peak_pss: int  # ... counting shared pages proportionally
    procs: int  # processes alive at the peak
    stdout: str
    main_cpu: float  # CPU seconds of the command's own process
    other_cpu: float  # ... of all its descendants together


def measure(cmd: list[str]) -> Measured:
    """Run cmd, sampling its process tree; SystemExit when it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    with PeakRSS(proc.pid) as rss:
        stdout, _ = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} exited {proc.returncode}")
    return Measured(
        wall, rss.peak, rss.peak_pss, rss.peak_procs, stdout, rss.main_cpu, rss.other_cpu
    )


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    ram = psutil.virtual_memory().total / 2**30
    return f"{cores} cores ({model}), {ram:.0f} GiB RAM, {platform.system()} {platform.release()}"


def version(dist: str) -> str:
    from importlib import metadata

    return metadata.version(dist)
