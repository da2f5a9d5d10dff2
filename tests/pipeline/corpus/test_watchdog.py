"""The memory watchdog on real processes: a child that allocates, a limit it crosses."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from model.errors import ResourceError
from pipeline.corpus.watchdog import (
    GB,
    MemoryWatchdog,
    Trip,
    available_bytes,
    cgroup_headroom,
    memory_cgroups,
    tree_rss,
)
from tests.conftest import REPO

MB = 2**20

# Waits for a line on stdin, then holds `n` MB of touched memory (bytes * n writes
# every page, so it is resident) until killed. Prints a marker at each step.
GROWER = """
import sys, time
print("ready", flush=True)
sys.stdin.readline()
held = b"x" * ({n} << 20)
print("grown", flush=True)
time.sleep(20)
"""

# A parent that runs GROWER as its child and reports the child's exit code,
# then stays alive until its stdin closes: the process the watchdog watches.
PARENT = """
import subprocess, sys
r = subprocess.run([sys.executable, "-c", sys.argv[1]])
print("child exit", r.returncode, flush=True)
sys.stdin.read()
"""


def _grower(n_mb: int) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", GROWER.format(n=n_mb)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def _grow(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.stdout.readline() == "grown\n"


def _wait_for(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def test_tree_rss_counts_a_child_that_allocates() -> None:
    child = _grower(200)
    try:
        base, nbase = tree_rss(os.getpid())
        own, nown = tree_rss(child.pid)
        _grow(child)
        grown, ngrown = tree_rss(os.getpid())
        child_rss, one = tree_rss(child.pid)
    finally:
        _stop(child)
    assert one == nown == 1 and ngrown == nbase >= 2
    assert child_rss - own >= 190 * MB
    assert grown - base >= 190 * MB
    assert tree_rss(child.pid) == (0, 0)  # reaped: the process is gone, not an error


def test_trip_on_max_rss_kills_the_workers_not_the_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, GROWER.format(n=300)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdin is not None and parent.stdout is not None
    try:
        assert parent.stdout.readline() == "ready\n"  # the grandchild speaks through it
        base, nproc = tree_rss(parent.pid)
        assert nproc == 2
        seen: list[Trip] = []
        limit_gb = (base + 150 * MB) / GB
        with MemoryWatchdog(limit_gb, 0, interval=0.02, pid=parent.pid, on_trip=seen.append) as dog:
            assert dog.tripped is None
            parent.stdin.write("go\n")
            parent.stdin.flush()
            assert _wait_for(lambda: dog.tripped is not None)
            # the grandchild is killed by SIGTERM (maybe before it finished growing),
            # and its parent lives on
            lines = [parent.stdout.readline()]
            if lines[-1] == "grown\n":
                lines.append(parent.stdout.readline())
            assert lines[-1] == "child exit -15\n"
            assert parent.poll() is None
            assert tree_rss(parent.pid)[1] == 1
        trip = dog.tripped
        assert trip is not None and seen == [trip]  # on_trip once, with the first trip
        assert trip.key == "max_rss_gb" and trip.limit_gb == limit_gb
        assert trip.value_gb >= limit_gb
        assert trip.figure == "resident memory of the stage (2 processes)"
        msg = trip.message()
        assert "max_rss_gb=" in msg and "\n" not in msg
        assert msg.startswith("resident memory of the stage (2 processes) reached ")
        assert dog.peak_rss_bytes >= base + 150 * MB
    finally:
        _stop(parent)


def _python(code: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -c code` from the repository root, which must succeed."""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr
    return out


def test_kill_children_leaves_zombies_to_their_parent() -> None:
    """A killed child's exit code still reaches Popen/multiprocessing (not reaped by us)."""
    code = (
        "import os, subprocess, sys, time\n"
        "from pipeline.corpus.watchdog import kill_children\n"
        "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
        " for _ in range(2)]\n"
        "time.sleep(0.3)\n"
        "print(kill_children(os.getpid(), timeout=2), [k.wait(5) for k in kids])\n"
    )
    out = _python(code, timeout=30)
    assert out.stdout.split(maxsplit=1) == ["2", "[-15, -15]\n"]


def test_kill_children_escalates_to_sigkill() -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    code = (
        "import os, subprocess, sys, time\n"
        "from pipeline.corpus.watchdog import kill_children\n"
        f"k = subprocess.Popen([sys.executable, '-c', {stubborn!r}])\n"
        "time.sleep(0.3)\n"
        "t = time.monotonic(); n = kill_children(os.getpid(), timeout=0.5)\n"
        "print(n, k.wait(5), round(time.monotonic() - t, 1))\n"
    )
    out = _python(code, timeout=30)
    n, rc, secs = out.stdout.split()
    assert (n, rc) == ("1", "-9") and 0.4 <= float(secs) < 3


def test_kill_children_spares_the_forkserver_and_resource_tracker() -> None:
    """The workers die; multiprocessing's helpers live, so the next worker can still start.

    Killing the forkserver made a pool's next submit fail with EOFError while the
    tripped stage was stopping (a traceback instead of its one line), and killing the
    resource tracker printed the relaunched tracker's KeyError tracebacks.
    """
    code = (
        "import multiprocessing as mp, os, psutil\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from pipeline.corpus.watchdog import kill_children\n"
        "ctx = mp.get_context('forkserver')\n"
        "pool = ProcessPoolExecutor(2, mp_context=ctx)\n"
        "workers = {pool.submit(os.getpid).result() for _ in range(20)}\n"
        "helpers = {p.pid for p in psutil.Process().children()}\n"
        "n = kill_children(os.getpid(), timeout=2)\n"
        "left = {p.pid for p in psutil.Process().children(recursive=True) if p.status() != 'zombie'}\n"
        "again = ProcessPoolExecutor(1, mp_context=ctx)\n"
        "print(n, len(helpers), left == helpers, again.submit(int, '7').result())\n"
        "again.shutdown()\n"
    )
    out = _python(code, timeout=60)
    # the pool runs up to 2 workers; both helpers (forkserver, resource tracker) survive
    n, helpers, kept, answer = out.stdout.split()
    assert 1 <= int(n) <= 2 and helpers == "2" and kept == "True" and answer == "7"
    assert "Traceback" not in out.stderr, out.stderr


def test_min_available_trips_at_once() -> None:
    total_gb = psutil.virtual_memory().total / GB
    seen: list[Trip] = []
    with MemoryWatchdog(
        0, 2 * total_gb, interval=0.02, kill_on_trip=False, on_trip=seen.append
    ) as dog:
        assert _wait_for(lambda: dog.tripped is not None, timeout=2)
        time.sleep(0.1)  # more samples trip again; the first trip stays
    trip = dog.tripped
    assert trip is not None and trip.key == "min_available_gb"
    assert trip.figure == "available memory of the machine"
    assert 0 < trip.value_gb < trip.limit_gb == 2 * total_gb
    assert "min_available_gb=" in trip.message()
    assert seen == [trip]


def test_check_raises_one_line_resource_error() -> None:
    dog = MemoryWatchdog(0, 1e6, kill_on_trip=False)
    dog.check()  # nothing sampled yet: nothing to raise
    assert dog.sample_now() is not None
    with pytest.raises(ResourceError) as err:
        dog.check("rerun the same command to resume from the last complete shard")
    text = str(err.value)
    assert "\n" not in text and "min_available_gb=" in text
    assert text.endswith("; rerun the same command to resume from the last complete shard")
    assert err.value.exit_code == 3


def test_zero_limits_disable_the_checks() -> None:
    dog = MemoryWatchdog(0, 0, kill_on_trip=False)
    assert dog.sample_now() is None and dog.tripped is None
    assert dog.peak_rss_bytes > 0  # the peak is still measured
    tiny = MemoryWatchdog(1e-6, -1, kill_on_trip=False)  # 1 KB: any process crosses it
    assert tiny.sample_now() is not None


def test_generous_limits_never_trip_and_the_thread_stops() -> None:
    before = {t.ident for t in threading.enumerate()}
    with MemoryWatchdog(1000, 0.001, interval=0.01) as dog:
        time.sleep(0.3)
        ours = [t for t in threading.enumerate() if t.ident not in before]
        assert [t.name for t in ours] == ["memory-watchdog"] and ours[0].daemon
    assert dog.tripped is None
    assert dog.peak_rss_bytes >= tree_rss()[0] // 2
    assert not ours[0].is_alive()
    dog.check()


def test_available_bytes_on_this_machine() -> None:
    avail = available_bytes()
    assert 0 < avail <= psutil.virtual_memory().total


@pytest.mark.parametrize("version", [1, 2])
def test_cgroup_headroom_reads_limit_usage_and_cache(tmp_path: Path, version: int) -> None:
    """A folder laid out as the kernel lays out a v1 or v2 memory cgroup."""
    limit, usage, cache = 8 * GB, 6 * GB, 1 * GB
    if version == 2:
        (tmp_path / "memory.max").write_text(f"{limit}\n")
        (tmp_path / "memory.current").write_text(f"{usage}\n")
        (tmp_path / "memory.stat").write_text(f"anon 123\ninactive_file {cache}\nactive_file 7\n")
    else:
        (tmp_path / "memory.limit_in_bytes").write_text("9223372036854771712\n")
        (tmp_path / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (tmp_path / "memory.stat").write_text(
            f"inactive_file 5\nhierarchical_memory_limit {limit}\ntotal_inactive_file {cache}\n"
        )
    assert cgroup_headroom(version, tmp_path) == limit - (usage - cache)  # 3 GB
    # no limit: v2 writes "max", v1 a page-rounded 2**63
    if version == 2:
        (tmp_path / "memory.max").write_text("max\n")
    else:
        (tmp_path / "memory.stat").write_text("hierarchical_memory_limit 9223372036854771712\n")
    assert cgroup_headroom(version, tmp_path) is None
    assert cgroup_headroom(version, tmp_path / "absent") is None


def _mount(mid: int, root: str, mnt: Path, fstype: str, superopts: str) -> str:
    """One /proc/self/mountinfo line, as the kernel writes it."""
    return (
        f"{mid} 23 0:{mid} {root} {mnt} rw,nosuid,relatime shared:9 - {fstype} {fstype} {superopts}"
    )


def test_memory_cgroups_finds_the_folders_the_kernel_names(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "memory", tmp_path / "unified"
    leaf = v2 / "user.slice" / "job.scope"
    (v1 / "process_api" / "abc").mkdir(parents=True)
    leaf.mkdir(parents=True)
    mounts = "\n".join(
        [
            _mount(30, "/", tmp_path / "cpu", "cgroup", "rw,cpu"),
            _mount(35, "/", v1, "cgroup", "rw,memory"),
            _mount(41, "/", v2, "cgroup2", "rw,nsdelegate"),
        ]
    )
    # a host with both hierarchies: the v1 leaf; the v2 leaf and its ancestors to the mount
    own = "8:pids:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/user.slice/job.scope\n"
    assert memory_cgroups(own, mounts) == (
        (1, (v1 / "process_api" / "abc",)),
        (2, (leaf, v2 / "user.slice", v2)),
    )
    # docker without a cgroup namespace: the mount root is the container's own cgroup
    own = "4:memory:/docker/0123\n"
    assert memory_cgroups(own, _mount(35, "/docker/0123", v1, "cgroup", "rw,memory")) == (
        (1, (v1,)),
    )
    # docker with one (cgroup v2): everything is "/", the mount is the container's cgroup
    assert memory_cgroups("0::/\n", _mount(41, "/", v2, "cgroup2", "rw")) == ((2, (v2,)),)
    # a folder that is not there (another mount namespace): fall back to the mount
    assert memory_cgroups("0::/gone\n", _mount(41, "/", v2, "cgroup2", "rw")) == ((2, (v2,)),)
    assert memory_cgroups("garbage\n", "garbage\n") == ()
