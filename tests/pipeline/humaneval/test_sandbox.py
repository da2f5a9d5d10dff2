"""The sandbox on real processes with real limits: ordinary programs, then hostile ones.

Each hostile program runs in the boxes that must stop it: "guard" (namespaces and the
Python guard, the default), "jail" (the OS layers alone, guard off), "fallback" (no
namespaces, guard off: the process, the limits and the launcher alone) and, for our files,
"fallback-guard" (the guard alone). A box the machine cannot give is skipped with the reason. Controls show that each hostile program does its
harm where nothing stops it, so that a passing test means the box stopped it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pipeline.humaneval import launcher, sandbox
from pipeline.humaneval.sandbox import Limits, isolation, run_many, run_program
from tests.conftest import REPO

FAST = Limits(wall_s=2, cpu_s=2, memory_mb=256)
BOXES = {
    "guard": FAST,
    "jail": dataclasses.replace(FAST, guard=False),
    "fallback": dataclasses.replace(FAST, guard=False, namespaces=False),
    "fallback-guard": dataclasses.replace(FAST, namespaces=False),
}
TOKEN = "sandbox-test-stray-5e1c"  # in the command line of the daemons and children started
BOX_DIRS = os.path.join(tempfile.gettempdir(), "sandbox-")
AS_ROOT = os.geteuid() == 0
# The stray scan looks at every process of the machine: make test runs a module's tests on
# one pytest-xdist worker (--dist loadscope), so one test's daemon control is never
# another's stray.


def box(name: str) -> Limits:
    if name == "jail" and not isolation()["pid"]:
        pytest.skip(f"no namespaces on this machine: isolation() = {isolation()}")
    return BOXES[name]


def strays(marker: str = TOKEN) -> list[psutil.Process]:
    """Processes left of a sandboxed program: they carry the marker, or their box is gone.

    Every process of a box has HOME = its directory, which is removed when the run ends:
    a process whose HOME is such a directory, gone, is a leftover by definition (and a box
    someone else is running now is not mistaken for one).
    """
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
                continue
            home = proc.environ().get("HOME", "")
            if home.startswith(BOX_DIRS) and not os.path.exists(home):
                found.append(proc)
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """Every test starts clean and must end clean: no process of any program survives."""
    assert strays() == []
    yield
    left = strays()
    for proc in left:
        proc.kill()
    psutil.wait_procs(left, timeout=5)  # so that the next test does not start with them
    assert left == []


# --- ordinary programs ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["guard", "jail", "fallback"])
def test_a_correct_program_passes(name: str) -> None:
    outcome = run_program("print(sum(range(10)))", box(name))
    assert (outcome.passed, outcome.status, outcome.detail) == (True, "passed", "")
    assert outcome.stdout == "45\n"
    assert 0 < outcome.seconds < FAST.wall_s


def test_a_failing_assert_fails_with_the_assertion_error() -> None:
    outcome = run_program("assert 1 + 1 == 3, 'arithmetic'", FAST)
    assert (outcome.passed, outcome.status) == (False, "failed")
    assert outcome.detail == "AssertionError: arithmetic"


def test_a_syntax_error_fails() -> None:
    outcome = run_program("def f(:\n    return 1\n", FAST)
    assert (outcome.passed, outcome.status) == (False, "failed")
    assert outcome.detail.startswith("SyntaxError")


def test_a_silent_non_zero_exit_fails_with_its_code() -> None:
    outcome = run_program("import sys\nsys.exit(3)", FAST)
    assert (outcome.passed, outcome.status, outcome.detail) == (False, "failed", "exit code 3")


def test_a_program_that_cannot_start_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "INTERPRETER", "/nonexistent/python")
    outcome = run_program("pass", box("fallback"))
    assert (outcome.passed, outcome.status) == (False, "error")
    assert "could not start" in outcome.detail


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="wall_s, output_kb"):
        Limits(wall_s=0, output_kb=-1)


REPORT = """
import json, os, sys
print(json.dumps({"pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
                  "env": dict(os.environ), "cwd": os.getcwd(), "stdin": sys.stdin.read(),
                  "isolated": sys.flags.isolated, "argv": sys.argv}))
"""


@pytest.mark.parametrize("name", ["guard", "fallback"])
def test_the_program_runs_in_its_own_process_session_and_scrubbed_directory(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_not_for_the_program")
    outcome = run_program(REPORT, box(name))
    seen = json.loads(outcome.stdout)
    assert seen["pid"] != os.getpid()
    # It leads a session and a group of its own. Compared with itself, not with our sid:
    # in a PID namespace a session led from outside it reads 0, on either side (CI's).
    assert seen["sid"] == seen["pgid"] == seen["pid"] > 0
    assert sorted(seen["env"]) == ["HOME", "LANG", "PATH", "TMPDIR"]
    assert seen["env"]["HOME"] == seen["env"]["TMPDIR"] == seen["cwd"]
    assert Path(seen["cwd"]).name.startswith("sandbox-")
    assert not Path(seen["cwd"]).exists()  # removed afterwards
    assert (seen["stdin"], seen["isolated"], seen["argv"]) == ("", 1, ["program.py"])


LIMITS = """
import resource
for name in ("CPU", "AS", "NOFILE", "FSIZE", "CORE", "NPROC"):
    print(name, *resource.getrlimit(getattr(resource, "RLIMIT_" + name)))
"""


@pytest.mark.parametrize("name", ["guard", "fallback"])
def test_the_limits_are_set_in_the_program_soft_and_hard(name: str) -> None:
    outcome = run_program(LIMITS, box(name))
    mb = 2**20
    assert outcome.stdout.split("\n")[:-1] == [
        "CPU 2 3",
        f"AS {256 * mb} {256 * mb}",
        "NOFILE 64 64",
        f"FSIZE {16 * mb} {16 * mb}",
        "CORE 0 0",
        "NPROC 64 64",
    ]


@pytest.mark.parametrize("name", ["jail", "fallback"])
def test_the_cpu_limit_kills_a_program_that_spins_past_it(name: str) -> None:
    limits = dataclasses.replace(box(name), cpu_s=1, wall_s=4)
    outcome = run_program("while True: pass", limits)
    assert (outcome.passed, outcome.status) == (False, "killed")
    assert outcome.detail == "SIGXCPU: CPU-time limit (1 s)"  # not the wall clock's 4 s


@pytest.mark.parametrize(
    ("name", "full"),
    [("jail", "[Errno 28] No space left on device"), ("fallback", "[Errno 27] File too large")],
)
def test_the_file_and_open_file_limits_hold(name: str, full: str) -> None:
    """17 MB in one file: RLIMIT_FSIZE stops it, or first, in the jail, its 16 MB tmpfs."""
    big = run_program("open('big', 'wb').write(b'x' * (17 << 20))", box(name))
    assert (big.status, big.detail) == ("failed", f"OSError: {full}")
    many = run_program("files = [open('f%d' % i, 'w') for i in range(100)]", box(name))
    assert many.status == "failed"
    assert many.detail.startswith("OSError: [Errno 24] Too many open files")


JAIL_VIEW = f"""
import json, os
seen = {{"root": os.listdir("/"), "tmp": os.listdir("/tmp"), "cwd": os.getcwd(),
        "repo": os.path.exists({str(REPO)!r}), "writes": [], "parts": []}}
for path in ("/usr/x", "/tmp/x", "/x", "/dev/null"):
    try:
        open(path, "w").close()
        seen["writes"].append("ok")
    except OSError as err:
        seen["writes"].append(err.strerror)
for i in range(3):  # 3 x 8 MB into its 16 MB directory
    try:
        with open(f"part{{i}}", "wb") as part:
            part.write(b"x" * (8 << 20))
        seen["parts"].append("ok")
    except OSError as err:
        seen["parts"].append(err.strerror)
status = [line.split(":") for line in open("/proc/self/status")]
seen["status"] = {{k: v.strip() for k, v in status if k.startswith(("Cap", "NoNewPrivs"))}}
print(json.dumps(seen))
"""


def test_the_jail_is_a_read_only_root_without_our_files_or_capabilities() -> None:
    seen = json.loads(run_program(JAIL_VIEW, box("jail")).stdout)
    system = {"bin", "dev", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr"}
    assert {"usr", "proc", "dev", "tmp"} <= set(seen["root"])
    assert set(seen["root"]) <= system | {Path(launcher.INTERPRETER).parts[1]}
    assert seen["tmp"] == [Path(seen["cwd"]).name]  # its own directory, nothing else of /tmp
    assert seen["repo"] is False
    assert seen["writes"] == ["Read-only file system"] * 3 + ["ok"]  # /dev/null works
    assert seen["parts"] == ["ok", "No space left on device", "No space left on device"]
    caps = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
    assert {k: seen["status"][k] for k in caps} == dict.fromkeys(caps, "0000000000000000")
    assert seen["status"]["NoNewPrivs"] == "1"


def test_isolation_reports_what_a_program_gets() -> None:
    report = isolation()
    assert set(report) == {"network", "filesystem", "pid"}
    assert all(isinstance(v, bool) for v in report.values())
    seen = run_program(f"import os\nprint(os.path.exists({str(REPO)!r}))", FAST)
    assert seen.stdout == f"{not report['filesystem']}\n"


def test_where_namespaces_are_refused_it_falls_back_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As in a Docker container: unshare fails, the probe reports it, programs still run."""
    refused = "echo 'unshare: unshare failed: Operation not permitted' >&2; exit 1"
    monkeypatch.setattr(sandbox, "_UNSHARE", ["sh", "-c", refused, "--"])
    sandbox._probe.cache_clear()
    try:
        assert isolation() == {"network": False, "filesystem": False, "pid": False}
        assert "unshare failed: Operation not permitted" in caplog.text
        outcome = run_program(f"import os\nprint(os.path.exists({str(REPO)!r}))", FAST)
        assert (outcome.status, outcome.stdout) == ("passed", "True\n")  # our filesystem
    finally:
        sandbox._probe.cache_clear()


# --- hostile programs -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["jail", "fallback"])
def test_an_infinite_loop_times_out(name: str) -> None:
    outcome = run_program("while True: pass", box(name))
    assert (outcome.passed, outcome.status) == (False, "timeout")
    assert outcome.detail == "wall-clock limit (2 s)"
    assert FAST.wall_s <= outcome.seconds < FAST.wall_s + 1


@pytest.mark.parametrize("name", ["guard", "jail", "fallback"])
def test_a_fork_bomb_is_stopped(name: str) -> None:
    if name == "fallback" and AS_ROOT:
        pytest.skip("as root RLIMIT_NPROC does not bind, and without a PID namespace nothing "
                    "else counts processes: the fallback cannot stop a fork bomb (docs/eval.md)")  # fmt: skip
    outcome = run_program("import os\nwhile True: os.fork()", box(name))
    assert not outcome.passed
    if name == "guard":
        assert outcome.detail == "PermissionError: disabled in the sandbox"
    else:  # the OS stopped it: our process count (as root), or RLIMIT_NPROC
        assert outcome.detail in (
            "sandbox: more than 64 processes",
            "BlockingIOError: [Errno 11] Resource temporarily unavailable",
        )
    # and nothing of it is left running (the autouse fixture checks that too)
    assert strays() == []


@pytest.mark.parametrize("name", ["jail", "fallback"])
def test_unbounded_allocation_fails_at_the_address_space_limit(name: str) -> None:
    outcome = run_program("x = []\nwhile True: x.append(bytearray(10**7))", box(name))
    assert (outcome.passed, outcome.status, outcome.detail) == (False, "failed", "MemoryError")


@pytest.mark.parametrize("name", ["jail", "fallback"])
def test_printing_gigabytes_is_stopped_and_our_memory_stays_small(name: str) -> None:
    run_program("print('warm-up')", box(name))
    ours = psutil.Process()
    before = ours.memory_info().rss
    outcome = run_program('while True: print("x" * 10**6)', box(name))
    grown = ours.memory_info().rss - before
    assert (outcome.passed, outcome.status) == (False, "killed")
    assert outcome.detail == "output limit (64 KB)"
    assert len(outcome.stdout) == 64 * 1024 and outcome.stdout.startswith("xxx")
    assert grown < 4 * 2**20


def hostile_file_program(victim: Path) -> str:
    return f"""
import os, shutil
victim = {str(victim)!r}
for attempt in (lambda: os.remove(victim), lambda: os.unlink(victim),
                lambda: shutil.rmtree(os.path.dirname(victim)),
                lambda: open(victim, "w").write("overwritten"),
                lambda: os.rename(victim, victim + ".moved"),
                lambda: open(os.path.dirname(victim) + "/created.txt", "w").write("new"),
                lambda: os.open(os.path.dirname(victim) + "/created2.txt", os.O_CREAT | os.O_WRONLY),
                lambda: os.mkdir(os.path.dirname(victim) + "/created_dir")):
    try:
        attempt()
        print("done")
    except OSError as err:
        print(type(err).__name__)
"""


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("precious")
    return path


@pytest.mark.parametrize("name", ["guard", "jail", "fallback-guard"])
def test_files_outside_its_directory_are_neither_deleted_nor_written(
    name: str, victim: Path
) -> None:
    outcome = run_program(hostile_file_program(victim), box(name))
    assert "done" not in outcome.stdout.split("\n")
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]
    assert victim.read_text() == "precious"


def test_control_the_file_program_does_harm_where_nothing_stops_it(victim: Path) -> None:
    """The fallback without the guard: our own user's files are open to it (docs/eval.md)."""
    outcome = run_program(hostile_file_program(victim), box("fallback"))
    assert outcome.passed
    assert not victim.exists()


CONNECT = """
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"hello")
    print("connected")
except OSError as err:
    print(err)
"""


@pytest.mark.parametrize(("name", "arrives"), [("jail", False), ("fallback", True)])
def test_a_connection_to_our_listener_arrives_only_without_the_network_namespace(
    name: str, arrives: bool
) -> None:
    if name == "jail" and not isolation()["network"]:
        pytest.skip(f"no network namespace on this machine: isolation() = {isolation()}")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        outcome = run_program(CONNECT.format(port=listener.getsockname()[1]), box(name))
        listener.settimeout(0.2)
        try:
            listener.accept()[0].close()
            arrived = True
        except TimeoutError:
            arrived = False
    assert arrived is arrives
    assert (outcome.stdout == "connected\n") is arrives


# Starts a daemon (fork, setsid, fork, exec: it sleeps 600 s, TOKEN in its command line),
# waits until the daemon says it is up, then exits 0.
DAEMON = f"""
import os, sys
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.set_inheritable(w, True)
        code = "import os, time; os.write(%d, b'up'); time.sleep(600)" % w
        os.execv(sys.executable, [sys.executable, "-c", code, {TOKEN!r}])
    os._exit(0)
os.close(w)
print(os.read(r, 2).decode())
"""
CHILD = f"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "print('up', flush=True); import time; time.sleep(600)", {TOKEN!r}], stdout=subprocess.PIPE)
print(child.stdout.readline().decode().strip())
"""


@pytest.mark.parametrize("program", [DAEMON, CHILD], ids=["daemon", "child"])
@pytest.mark.parametrize("name", ["guard", "jail", "fallback"])
def test_nothing_it_started_survives_it(name: str, program: str) -> None:
    outcome = run_program(program, box(name))
    if name == "guard":
        assert (outcome.status, outcome.detail) == (
            "failed",
            "PermissionError: disabled in the sandbox",
        )
    else:  # the daemon or child did start: the OS layers must end it
        assert (outcome.status, outcome.stdout) == ("passed", "up\n")
    assert strays(TOKEN) == []


def test_control_the_stray_scan_sees_a_daemon_that_nothing_kills(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", DAEMON], cwd=tmp_path, check=True, timeout=10)
    found = strays(TOKEN)
    for proc in found:
        proc.kill()
    # kill() only sends the signal: without the wait the fixture's scan can still see it
    psutil.wait_procs(found, timeout=5)
    assert len(found) == 1 and strays(TOKEN) == []


# --- many programs --------------------------------------------------------------------------


def test_run_many_keeps_input_order_and_runs_several_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kinds = [("print({i})", "passed"), ("assert {i} < 0", "failed"), ("def (", "failed"),
             ("while True: pass", "timeout"), ("import sys; sys.exit({i})", "failed")]  # fmt: skip
    programs = [kinds[i % 5][0].format(i=i + 1) for i in range(20)]
    running, most = 0, 0
    lock = threading.Lock()
    real = sandbox.run_program

    def counted(source: str, limits: Limits) -> sandbox.Outcome:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            return real(source, limits)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(sandbox, "run_program", counted)
    limits = dataclasses.replace(FAST, wall_s=1)
    outcomes = run_many(programs, limits)
    assert [o.status for o in outcomes] == [kinds[i % 5][1] for i in range(20)]
    assert [o.stdout for o in outcomes[::5]] == [f"{i}\n" for i in (1, 6, 11, 16)]
    assert [o.detail for o in outcomes[4::5]] == [f"exit code {i}" for i in (5, 10, 15, 20)]
    assert most == min(len(os.sched_getaffinity(0)), 20)

    most = 0
    run_many(programs[:4], limits, workers=1)
    assert most == 1
