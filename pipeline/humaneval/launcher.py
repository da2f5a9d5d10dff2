"""The inside of the sandbox: the launcher that runs a program, and the Python guard.

sandbox.py starts `python -I -S launcher.py SETTINGS`, under `unshare` when namespaces
are available, so this module imports only the standard library: in the jail there is
nothing else, and -S keeps it from loading site-packages. The launcher builds the jail,
forks the program with its limits and without privileges, waits for it, kills what it
left, and exits with its exit code (128 + N for signal N, SETUP_FAILED if it could not set
the box up). Its messages are one line on stderr starting with "sandbox:".

`guard` runs in the program's own interpreter: sandbox.py sends its source with `-c`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

# The base interpreter (a venv's python is a symlink to it): the jail holds its prefix only.
INTERPRETER = os.path.realpath(sys.executable)
SETUP_FAILED = 125  # our exit code when the box could not be set up (as env(1) uses it)
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# mount(2) and prctl(2) constants (linux/mount.h, linux/prctl.h)
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND, _MS_REC = (
    1, 2, 4, 8, 32, 4096, 16384)  # fmt: skip
# a bind remount must repeat the flags it keeps, the locked ones (atime, nodev) above all
_KEPT = os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME | os.ST_RELATIME
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER = 24, 38, 36


def main(settings: dict[str, Any]) -> NoReturn:
    """Set the box up, start the program, wait for it, kill what it left, exit with its code.

    In the namespaces this is their PID 1: when it exits the kernel kills everything left
    in them. In the fallback it is a child subreaper: daemons the program starts come back
    to it, not to init, when their parent exits, so it can still find and kill them.
    """
    limits, jail = settings["limits"], settings["jail"]
    stopped: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, frame: stopped.append(number))  # time is up
    try:
        if jail:
            _build_jail(settings["workdir"], limits["file_mb"])
        else:
            _libc("prctl", _PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception as err:  # whatever it is, the program must not run half-boxed
        _say(f"cannot build the box: {err}")
        os._exit(SETUP_FAILED)
    child = os.fork()
    if child == 0:
        _start_program(settings)
    # No setpgid(child) here: were it first, the child, then a group leader, could not
    # setsid. Until it has, it has no children, and _kill_all finds it by pid.
    code = _supervise(child, limits, jail, stopped)
    _kill_all(child, jail)
    os._exit(code)


def _build_jail(workdir: str, file_mb: int) -> None:
    """A new root with only what Python needs, all read-only but the program's directory.

    We are root in our own user and mount namespaces, so these mounts exist there only.
    The program sees the OS's /usr and /lib (merged-/usr symlinks stay symlinks), Python's
    prefix at its own path, five harmless devices, a /proc of its PID namespace, and its
    directory at the same path as ours: a fresh tmpfs of `file_mb` (it cannot fill our disk).
    Nothing else exists for it: not our files, not /tmp, /run or /home and the unix sockets
    in them (docker, dbus, ssh-agent), which a read-only mount would not protect.
    """
    new = os.path.join(workdir, "root")
    program = Path(workdir, "program.py").read_bytes()
    _mount("tmpfs", new, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    prefix = os.path.realpath(sys.base_prefix)
    inside_system = any(prefix == d or prefix.startswith(d + "/") for d in _SYSTEM)
    for path in (*_SYSTEM, *_DEVICES, *([] if inside_system else [prefix])):
        _expose(path, new + path)
    os.makedirs(new + "/proc")
    _mount("proc", new + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    os.makedirs(new + workdir)
    _mount("tmpfs", new + workdir, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={file_mb}m,mode=0700")
    Path(new + workdir, "program.py").write_bytes(program)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # "\040" is a space
        if (point == new or point.startswith(new + "/")) and point != new + workdir:
            flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID
            _mount("none", point, None, flags | (os.statvfs(point).f_flag & _KEPT))
    os.chroot(new)
    os.chdir(workdir)


def _expose(path: str, target: str) -> None:
    """Show `path` at `target` in the jail: a symlink as a symlink, anything else bound."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(path):
        os.symlink(os.readlink(path), target)
    elif os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
        _mount(path, target, None, _MS_BIND | _MS_REC)
    elif os.path.exists(path):
        Path(target).touch()
        _mount(path, target, None, _MS_BIND)


def _start_program(settings: dict[str, Any]) -> NoReturn:
    """In the forked child: a session and group of its own, the limits, no privileges, exec.

    A session of its own also leaves it no controlling terminal to type into (TIOCSTI).
    """
    try:
        os.setsid()
        os.chdir(settings["workdir"])
        _set_limits(settings["limits"])
        _libc("prctl", _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid files give it nothing
        if settings["jail"]:
            # We are root in the user namespace: its capabilities would let the program undo
            # the read-only mounts or leave the chroot. Emptied, exec gives it none.
            last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
            for cap in range(last + 1):
                _libc("prctl", _PR_CAPBSET_DROP, cap, 0, 0, 0)
        runner = settings["runner"]
        argv = ["-I", "program.py"] if runner is None else ["-I", "-c", runner, "program.py"]
        os.execv(INTERPRETER, [INTERPRETER, *argv])
    except BaseException as err:  # never return into the launcher's code in the child
        _say(f"cannot start the program: {err}")
    os._exit(SETUP_FAILED)


def _set_limits(limits: dict[str, Any]) -> None:
    """Hard limits too, so the program cannot raise them again (we never raise ours)."""
    mb, cpu = 2**20, math.ceil(limits["cpu_s"])
    # RLIMIT_NPROC counts every process of the real user id, in the namespace of its user
    # (kernel 5.14+): in ours, created by a user that is not root, it counts the program's
    # processes alone, exactly. Root is exempt, and in the fallback it counts all our user's
    # processes: there it is a rough bound (docs/eval.md); _supervise counts in the jail.
    for kind, soft, hard in (
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at cpu_s, SIGKILL if that is caught
        (resource.RLIMIT_AS, limits["memory_mb"] * mb, limits["memory_mb"] * mb),
        (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
        (resource.RLIMIT_FSIZE, limits["file_mb"] * mb, limits["file_mb"] * mb),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NPROC, limits["processes"], limits["processes"]),
    ):
        ours = resource.getrlimit(kind)[1]
        hard = hard if ours == resource.RLIM_INFINITY else min(hard, ours)
        resource.setrlimit(kind, (min(soft, hard), hard))


def _supervise(child: int, limits: dict[str, Any], jail: bool, stopped: list[int]) -> int:
    """Wait for the program: its exit code, 128 + N for signal N, 128 + 9 if we stop it.

    In the jail every process in /proc is the program's: more than `processes` of them and
    it is stopped within one poll, which bounds a fork bomb even as root. We keep our own
    clock too (wall_s + 1 s), should the harness that keeps the real one be gone.
    """
    deadline = time.monotonic() + limits["wall_s"] + 1.0
    while not stopped:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code
        if jail and sum(name.isdigit() for name in os.listdir("/proc")) > limits["processes"]:
            _say(f"more than {limits['processes']} processes")
            break
        if time.monotonic() > deadline:
            _say(f"wall-clock limit ({limits['wall_s']:g} s)")
            break
        time.sleep(0.005)
    return 128 + signal.SIGKILL


def _kill_all(child: int, jail: bool) -> None:
    """Leave nothing running: everyone at once, then whatever is still our child, by pid.

    In the PID namespace kill(-1) reaches every process but us. In the fallback the
    program's group goes at once (no member can fork past a group kill); daemons that
    left the group with setsid are our children by now, or will be when their parent dies.
    """
    with contextlib.suppress(ProcessLookupError):
        if jail:
            os.kill(-1, signal.SIGKILL)
        else:
            os.killpg(child, signal.SIGKILL)
    while kids := _children():
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _children() -> list[int]:
    """Our children, from /proc/<pid>/stat (the parent is the 2nd field after the name)."""
    kids = []
    for name in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if name.isdigit():
                stat = Path("/proc", name, "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                    kids.append(int(name))
    return kids


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _libc("mount", source.encode(), target.encode(), fstype and fstype.encode(), flags,
          data.encode() or None)  # fmt: skip


def _libc(name: str, *args: object) -> None:
    """Call a libc function that returns 0 or -1 with errno; raise OSError on -1."""
    import ctypes  # the launcher's alone: the harness never needs it

    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{name}{args[:2]}: {os.strerror(number)}")


def _say(message: str) -> None:
    print(f"sandbox: {message}", file=sys.stderr, flush=True)


# What the guard refuses, by module, and the modules it makes unimportable.
REFUSED = {
    "os": (
        "fork", "forkpty", "system", "popen", "kill", "killpg", "setsid", "setpgid",
        "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
        "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp",
        "spawnvpe", "posix_spawn", "posix_spawnp", "remove", "unlink", "rmdir",
        "removedirs", "rename", "renames", "replace", "truncate", "ftruncate", "link",
        "symlink", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot",
        "mkfifo", "mknod", "putenv", "unsetenv", "setuid", "setgid", "seteuid", "setegid",
        "setreuid", "setregid", "setresuid", "setresgid",
    ),
    "shutil": ("rmtree", "move", "chown"),
    "subprocess": ("Popen", "run", "call", "check_call", "check_output"),
    "socket": ("socket", "socketpair", "create_connection", "create_server"),
}  # fmt: skip
UNIMPORTABLE = ("ctypes", "_ctypes", "multiprocessing", "_posixsubprocess", "_socket")


def guard(refused: dict[str, tuple[str, ...]], unimportable: tuple[str, ...]) -> None:
    """Disable what a program could damage the machine with, before its code runs.

    Its source is sent to the program's interpreter (`python -c`), so it must stand alone.
    A speed bump, not a boundary: a C extension, a function these lists miss, or an object
    reached another way gets round it. In the jail it only turns a doomed attempt into a
    clear PermissionError; in the fallback it is the only thing between the program and our
    files. Writing is allowed inside the program's own directory (and to /dev/null);
    deleting, renaming and the rest of `refused` are refused everywhere.
    """
    import builtins
    import importlib
    import io
    import os
    import sys

    home = os.path.realpath(os.getcwd())
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise PermissionError("disabled in the sandbox")

    def inside(path: Any) -> bool:
        if isinstance(path, int) or os.fspath(path) in (os.devnull, os.fsencode(os.devnull)):
            return True
        return os.path.realpath(os.fsdecode(path)).startswith(home + os.sep)

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if set(mode) & set("wax+") and not inside(file):
            refuse()
        return real_open(file, mode, *args, **kwargs)

    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & write_flags and not inside(path):
            refuse()
        return real_os_open(path, flags, *args, **kwargs)

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if not inside(path):
            refuse()
        real_mkdir(path, *args, **kwargs)

    builtins.open = io.open = open_  # pathlib opens through io.open
    os.open, os.mkdir = os_open, mkdir
    for module_name, names in refused.items():
        module = importlib.import_module(module_name)
        for name in names:
            if hasattr(module, name):
                setattr(module, name, refuse)
    for module_name in unimportable:
        sys.modules[module_name] = None  # type: ignore[assignment]  # `import` now raises


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
