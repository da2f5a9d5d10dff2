"""The codebase's layout rules (docs/design.md, "Layout"), checked on the source itself.

- `model/` is the library and imports nothing from `pipeline/` (the stages);
- no import circle among the project's modules, lazy imports inside functions included;
- no module much over 400 lines and no function over 60 (docs/design.md, "Layout");
- the two data stages (tokenize, dedup) import nothing from each other's room: what they
  share lives in a third, pipeline/corpus/ (docs/design.md, "Layout");
- the data stages (tokenize, dedup) start without torch: its import costs each of them
  seconds and hundreds of MB they do not need;
- a stage's room (its package's __init__) lists every module in it, and the documents
  the code cites exist.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("model", "pipeline")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, anywhere in the file (top level or in a function)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from model import config`: the submodule, when there is one
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m in known}


def test_model_imports_nothing_from_pipeline() -> None:
    known = modules()
    offenders = {
        name: sorted(m for m in imports_of(path, known) if m.split(".")[0] == "pipeline")
        for name, path in known.items()
        if name.split(".")[0] == "model"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


# Two stages that share machinery import it from a third room, never from each other.
APART = (("pipeline.tokenize", "pipeline.dedup"), ("pipeline.dedup", "pipeline.tokenize"))


def _within(name: str, room: str) -> bool:
    return name == room or name.startswith(room + ".")


def test_tokenize_and_dedup_import_nothing_from_each_other() -> None:
    known = modules()
    crossing = sorted(
        f"{name} imports {dep}"
        for room, other in APART
        for name, path in known.items()
        if _within(name, room)
        for dep in imports_of(path, known)
        if _within(dep, other)
    )
    assert crossing == []


def test_no_import_circle() -> None:
    known = modules()
    graph = {name: imports_of(path, known) - {name} for name, path in known.items()}
    # a package's __init__ importing its own submodules is not a circle of modules
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                circles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_modules_and_functions_stay_small() -> None:
    too_big = []
    for name, path in modules().items():
        source = path.read_text(encoding="utf-8")
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            too_big.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(f"{name}.{node.name}: {length} lines")
    assert too_big == []


def test_the_checker_sees_an_import_from_pipeline(tmp_path: Path) -> None:
    """The import scan itself: a lazy `from pipeline...` inside a function is found."""
    known = modules()
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from pipeline.tokenize import stage\n    return stage\n")
    assert imports_of(probe, known) == {"pipeline.tokenize", "pipeline.tokenize.stage"}


def test_the_data_stages_do_not_import_torch() -> None:
    code = (
        "import sys, pipeline.tokenize.stage, pipeline.dedup.stage, pipeline.sample_data.stage\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"


def test_each_stage_room_lists_every_module_it_holds() -> None:
    """A package of pipeline/ whose docstring lists its modules (`name.py  what it does`)."""
    wrong = {}
    for init in sorted((REPO / "pipeline").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        listed = re.findall(r"^\s*(\w+\.py)\s", doc, flags=re.MULTILINE)
        held = sorted(p.name for p in init.parent.glob("*.py") if p.name != "__init__.py")
        if listed and sorted(listed) != held:
            wrong[init.parent.name] = {"missing": sorted(set(held) - set(listed)), "listed": listed}
    assert wrong == {}


CITED = re.compile(r"(?<![\w/.-])((?:docs/[\w/.-]+|[A-Z][A-Z_]*)\.md)\b")


def test_the_documents_the_code_cites_exist() -> None:
    """docs/*.md and top-level *.md files named in the project's Python files."""
    missing = set()
    for pkg in (*PACKAGES, "tests", "bench"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            for cited in CITED.findall(path.read_text(encoding="utf-8")):
                if not (REPO / cited).is_file():
                    missing.add(f"{path.relative_to(REPO)}: {cited}")
    assert missing == set()
