"""Run a model-written Python program without trusting it: `run_program`, `run_many`.

This is our side of the sandbox; launcher.py is the inside. The layers, outermost first
(docs/eval.md, "The sandbox", says what each one stops and what it does not):

- A process tree of its own, never ours: `python -I program.py` in a fresh temporary
  directory, with a scrubbed environment, stdin from /dev/null, in a session of its own.
- Namespaces, where the OS lets us create a user namespace (probed once, `isolation()`):
  an empty network namespace; a PID namespace whose PID 1 is the launcher, so nothing the
  program starts outlives it; and a jail, a new root with only the OS's /usr and /lib,
  Python's install and a few devices, read-only, and the program's directory. The program
  keeps no capabilities.
- Resource limits, set in the program's process before exec: CPU time, address space,
  open files, file size, no core dumps, processes.
- The launcher supervises the program and kills whatever it leaves; we keep the clock,
  read at most `output_kb` of its output, and kill its process group at the end.
- A Python guard that disables destructive functions before the program's code runs: a
  speed bump, not a boundary (ctypes or a C extension gets round it).

Without namespaces (a Docker container refuses them) programs run in the fallback: the
same process, limits, launcher and guard, but on our network and filesystem, as our user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import os
import selectors
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from pipeline.humaneval import launcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one program may use. The defaults suit a HumanEval problem (well under 1 s)."""

    wall_s: float = 5.0  # wall-clock seconds, startup included; then everything is killed
    cpu_s: float = 5.0  # RLIMIT_CPU: SIGXCPU at the limit, SIGKILL a second later
    memory_mb: int = 1024  # RLIMIT_AS, per process: an allocation past it fails (MemoryError)
    processes: int = 64  # processes at once, the launcher's count (docs/eval.md)
    open_files: int = 64  # RLIMIT_NOFILE
    file_mb: int = 16  # RLIMIT_FSIZE, per file; in the jail also its whole directory
    output_kb: int = 64  # stdout and stderr kept, each; a program writing more is stopped
    guard: bool = True  # the Python guard; off, only the OS layers stand (the tests do both)
    namespaces: bool = True  # use them where isolation() has them; off = the fallback

    def __post_init__(self) -> None:
        bad = [k for k, v in dataclasses.asdict(self).items() if not isinstance(v, bool) and v <= 0]
        if bad:
            raise ValueError(f"sandbox limits must be positive: {', '.join(bad)}")


Status = Literal["passed", "failed", "timeout", "killed", "error"]


@dataclass(frozen=True)
class Outcome:
    """How one program ended. Only "passed" (exit code 0 within every limit) is a pass."""

    passed: bool
    # "failed": a non-zero exit (an exception); "timeout": wall_s; "killed": a signal or a
    # limit (CPU, processes, output); "error": the sandbox could not start it
    status: Status
    detail: str  # one line: the last line of stderr, or which limit stopped it
    seconds: float
    stdout: str = ""  # the first output_kb of each, bad UTF-8 as U+FFFD
    stderr: str = ""


_DEFAULT = Limits()
_PATH = "/usr/local/bin:/usr/bin:/bin"
_UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--ipc"]
_UNSHARE += ["--uts", "--fork", "--kill-child", "--"]  # unshare killed: the launcher too


def isolation() -> dict[str, bool]:
    """What the OS gives each program here: its own network, filesystem view and PID space.

    They need one thing, a user namespace, so they come and go together; the names say what
    a program gets, for a stage's log and for tests to skip by.
    """
    jailed = _probe()
    return {"network": jailed, "filesystem": jailed, "pid": jailed}


@cache
def _probe() -> bool:
    """Whether the namespaced box works here: run `pass` in it, once."""
    outcome = _run("pass", _DEFAULT, jail=True)
    if not outcome.passed:
        log.warning(
            "sandbox: no namespaces here (%s); programs run on our network and filesystem, "
            "behind the limits and the Python guard only (docs/eval.md)",
            outcome.detail,
        )
    return outcome.passed


def run_program(source: str, limits: Limits = _DEFAULT) -> Outcome:
    """Run `source` as a Python program in the sandbox and say how it ended."""
    return _run(source, limits, jail=limits.namespaces and _probe())


def run_many(
    sources: list[str], limits: Limits = _DEFAULT, workers: int | None = None
) -> list[Outcome]:
    """Run each program in its own box, `workers` at once (default: the usable cores).

    Results come in input order. Threads suffice: each one only waits on its processes.
    """
    isolation()  # probe once, before the threads race to
    with ThreadPoolExecutor(max_workers=workers or len(os.sched_getaffinity(0))) as pool:
        return list(pool.map(lambda source: run_program(source, limits), sources))


def _run(source: str, limits: Limits, jail: bool) -> Outcome:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sandbox-", ignore_cleanup_errors=True) as tmp:
        Path(tmp, "program.py").write_text(source, encoding="utf-8")
        if jail:
            Path(tmp, "root").mkdir()  # the jail's root is mounted here, in its namespace only
        env = {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": tmp, "TMPDIR": tmp}
        try:
            proc = subprocess.Popen(
                _command(tmp, limits, jail),
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as failure:
            return Outcome(False, "error", f"could not start: {failure}", time.monotonic() - start)
        with proc:
            out, err, reason = _watch(proc, limits, start + limits.wall_s)
        seconds = time.monotonic() - start
    return _outcome(proc.returncode, out, err, reason, limits, seconds)


def _command(workdir: str, limits: Limits, jail: bool) -> list[str]:
    settings = {"workdir": workdir, "jail": jail, "limits": dataclasses.asdict(limits)}
    settings["runner"] = _runner() if limits.guard else None
    command = [launcher.INTERPRETER, "-I", "-S", os.path.abspath(launcher.__file__)]
    command.append(json.dumps(settings))
    return [*_UNSHARE, *command] if jail else command


@cache
def _runner() -> str:
    """The `python -c` code that puts the guard up, then runs program.py as __main__."""
    call = f"guard({launcher.REFUSED!r}, {launcher.UNIMPORTABLE!r})"
    return (
        f"from __future__ import annotations\n{inspect.getsource(launcher.guard)}\n{call}\n"
        "import runpy, sys\nsys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )


# --- our side: the clock, the output, the last kill ---------------------------------------


def _watch(
    proc: subprocess.Popen[bytes], limits: Limits, deadline: float
) -> tuple[bytes, bytes, str | None]:
    """Read its output until it ends or breaks a limit, then leave nothing of it running.

    The launcher is sent SIGTERM first, as it alone can find a daemon that left the group
    (in the fallback); then the group is killed. It is not reaped until then, so its pid,
    the group's id, cannot have been reused by another process.
    """
    out, err, reason = _read(proc, limits.output_kb * 1024, deadline)
    if reason is None and not _ended(proc, deadline - time.monotonic()):
        reason = "timeout"
    if reason is not None:
        _kill_group(proc, signal.SIGTERM)
        _ended(proc, 1.0)
    _kill_group(proc, signal.SIGKILL)
    proc.wait()
    return out, err, reason


def _read(
    proc: subprocess.Popen[bytes], cap: int, deadline: float
) -> tuple[bytes, bytes, str | None]:
    """stdout and stderr, the first `cap` bytes of each, as they come: never more in memory."""
    assert proc.stdout is not None and proc.stderr is not None
    kept = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    reason = None
    with selectors.DefaultSelector() as selector:
        for pipe in kept:
            selector.register(pipe, selectors.EVENT_READ)
        while selector.get_map() and reason is None:
            left = deadline - time.monotonic()
            if left <= 0:
                reason = "timeout"
                break
            for key, _ in selector.select(left):
                chunk, buf = os.read(key.fd, 1 << 16), kept[key.fileobj]  # type: ignore[index]
                if not chunk:
                    selector.unregister(key.fileobj)
                elif len(buf) + len(chunk) > cap:
                    buf += chunk[: cap - len(buf)]
                    reason = "output"
                else:
                    buf += chunk
    return bytes(kept[proc.stdout]), bytes(kept[proc.stderr]), reason


def _ended(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to `timeout` s for the process to end, without reaping it (WNOWAIT)."""
    end = time.monotonic() + timeout
    while not os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
        if time.monotonic() >= end:
            return False
        time.sleep(0.01)
    return True


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _outcome(
    code: int, out: bytes, err: bytes, reason: str | None, limits: Limits, seconds: float
) -> Outcome:
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    last = stderr.strip().rsplit("\n", 1)[-1].strip()
    status: Status
    if reason == "timeout":
        status, detail = "timeout", f"wall-clock limit ({limits.wall_s:g} s)"
    elif reason == "output":
        status, detail = "killed", f"output limit ({limits.output_kb} KB)"
    elif code == 0:
        status, detail = "passed", ""
    elif code == launcher.SETUP_FAILED:
        status, detail = "error", last or "the sandbox could not start"
    elif code < 0 or code > 128:  # a signal: -N from Popen, 128 + N from the launcher
        status = "killed"
        detail = last if last.startswith("sandbox:") else _signal(abs(code) % 128, limits)
    else:
        status, detail = "failed", last or f"exit code {code}"
    return Outcome(status == "passed", status, detail, seconds, stdout, stderr)


def _signal(number: int, limits: Limits) -> str:
    if number == signal.SIGXCPU:
        return f"SIGXCPU: CPU-time limit ({limits.cpu_s:g} s)"
    with contextlib.suppress(ValueError):
        return signal.Signals(number).name
    return f"signal {number}"
