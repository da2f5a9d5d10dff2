"""The inside of the sandbox: the launcher needs nothing but the standard library, and the
Python guard refuses what it lists while the program's own directory stays usable."""

from __future__ import annotations

import ast
import dataclasses
import json
import sys

from pipeline.humaneval import launcher
from pipeline.humaneval.sandbox import Limits, run_program
from tests.conftest import REPO


def test_the_launcher_imports_only_the_standard_library() -> None:
    """It runs with -S inside the jail, where site-packages and our packages do not exist."""
    tree = ast.parse((REPO / "pipeline/humaneval/launcher.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}


ATTEMPTS = """
import json, os, pathlib, shutil, socket, subprocess, sys
tries = {
    "os.system": lambda: os.system("true"),
    "os.fork": os.fork,
    "os.kill": lambda: os.kill(os.getpid(), 0),
    "os.remove": lambda: os.remove("mine.txt"),
    "shutil.rmtree": lambda: shutil.rmtree("."),
    "subprocess.run": lambda: subprocess.run(["true"]),
    "socket.socket": socket.socket,
    "import ctypes": lambda: __import__("ctypes"),
    "write outside": lambda: open("/tmp/outside-%d.txt" % os.getpid(), "w"),
    "os.open outside": lambda: os.open("/tmp/o-%d" % os.getpid(), os.O_CREAT | os.O_WRONLY),
    "mkdir outside": lambda: os.mkdir("/tmp/d-%d" % os.getpid()),
    "pathlib outside": lambda: pathlib.Path("/tmp/p-%d" % os.getpid()).write_text("x"),
}
seen = {}
for name, attempt in tries.items():
    try:
        attempt()
        seen[name] = "allowed"
    except (OSError, ImportError) as err:
        seen[name] = type(err).__name__
with open("mine.txt", "w") as mine:  # its own directory stays usable
    mine.write("ok")
pathlib.Path("sub").mkdir()
pathlib.Path("sub/also.txt").write_text("ok")
open(os.devnull, "w").write("discarded")
seen["own directory"] = open("mine.txt").read() + pathlib.Path("sub/also.txt").read_text()
print(json.dumps(seen))
"""


def test_the_guard_refuses_what_it_lists_and_keeps_the_own_directory_usable() -> None:
    # the fallback, so that the guard alone answers each attempt
    limits = dataclasses.replace(Limits(wall_s=3), namespaces=False)
    outcome = run_program(ATTEMPTS, limits)
    seen = json.loads(outcome.stdout)
    assert seen.pop("own directory") == "okok"
    assert seen.pop("import ctypes") == "ModuleNotFoundError"  # None in sys.modules
    assert seen == dict.fromkeys(seen, "PermissionError")
    assert len(seen) == 11


def test_the_guard_lists_name_real_functions() -> None:
    """A misspelt name would silently guard nothing (guard skips names a module lacks)."""
    import importlib

    missing = [
        f"{module}.{name}"
        for module, names in launcher.REFUSED.items()
        for name in names
        if not hasattr(importlib.import_module(module), name)
    ]
    assert missing in ([], ["os.lchmod"])  # lchmod exists on BSD and macOS only
