"""The near-dedup decision: which input rows the dedup stage drops. Its one writer and reader.

In the dedup stage's output folder:

- `near_duplicates.npy`: the dropped rows, sorted, as uint64 row ids
  `file_index << 40 | row within the file` (file_index in the sorted input
  list; up to 2**24 files of 2**40 rows, no footer needed to number them);
- `dedup.json`, written last and atomically: the inputs (path, size, mtime)
  and the rules the decision was made with, its parameters, its counts and
  the sha256 of `near_duplicates.npy`.

Tokenize (`near_dedup: <folder>`) reads both, refuses a decision made for other
inputs or rules (one line naming what differs), and skips the listed rows as
`near_duplicate`; the sha256 goes into its manifest's settings, so a new
decision means a new tokenize.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from model.atomic import write_atomically, write_text
from model.errors import InputError, StateError
from pipeline.corpus import inputs as inputslib

STATE = "dedup.json"
DROPPED = "near_duplicates.npy"
VERSION = 1
ROW_BITS = 40


def row_ids(file_index: int, first_row: int, n: int) -> np.ndarray:
    """The ids of rows [first_row, first_row + n) of input file `file_index`."""
    return (np.uint64(file_index) << np.uint64(ROW_BITS)) + np.arange(
        first_row, first_row + n, dtype=np.uint64
    )


def write(folder: Path, state: dict[str, Any], dropped: np.ndarray) -> None:
    """The dropped ids, then the state that points at them (complete: true)."""
    dropped = np.unique(dropped.astype(np.uint64))
    path = Path(folder) / DROPPED
    write_atomically(path, lambda f: np.save(f, dropped, allow_pickle=False))
    done = {**state, "version": VERSION, "complete": True, "dropped": DROPPED}
    done["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    write_text(Path(folder) / STATE, json.dumps(done, indent=1) + "\n")


def write_progress(folder: Path, state: dict[str, Any]) -> None:
    """The unfinished stage's resume state (complete: false), atomically."""
    data = {**state, "version": VERSION, "complete": False}
    write_text(Path(folder) / STATE, json.dumps(data, indent=1) + "\n")


def read_state(folder: Path) -> dict[str, Any] | None:
    """The stage's dedup.json, or None when there is none."""
    p = Path(folder) / STATE
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: unreadable ({e}); rerun `make dedup` with force=true") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise InputError(f"{p}: not a version-{VERSION} dedup state; rerun with force=true")
    return data


class Decision:
    """The rows to drop, for tokenize: `mark(file_index, first_row, n)` -> (n,) bool."""

    def __init__(self, dropped: np.ndarray, sha256: str) -> None:
        self.dropped, self.sha256 = dropped, sha256

    def mark(self, file_index: int, first_row: int, n: int) -> np.ndarray:
        ids = row_ids(file_index, first_row, n)
        if not len(self.dropped):
            return np.zeros(n, dtype=bool)
        i = np.minimum(np.searchsorted(self.dropped, ids), len(self.dropped) - 1)
        return self.dropped[i] == ids


def load(folder: Path, inputs: list[dict[str, Any]], rules: dict[str, Any]) -> Decision:
    """The decision of `folder`, checked against tokenize's inputs and rules."""
    folder = Path(folder)
    state = read_state(folder)
    fix = f"run `make dedup` (or python -m pipeline dedup) for this input and output={folder}"
    if state is None or not state.get("complete"):
        raise StateError(f"{folder / STATE}: no finished near-dedup decision; {fix}")
    # the rules as "settings": tokenize's rule keys must be the ones the decision applied
    made = {"inputs": state["inputs"], "settings": state["rules"]}
    changed = inputslib.differences(made, inputs, rules, None)
    if changed:
        raise StateError(
            f"{folder / STATE} was made for other inputs or rules ({'; '.join(changed[:5])}); {fix}"
        )
    path = folder / DROPPED
    try:
        dropped = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({e}); {fix} with force=true") from None
    if hashlib.sha256(path.read_bytes()).hexdigest() != state.get("sha256"):
        raise StateError(f"{path} does not match {folder / STATE}; {fix} with force=true")
    return Decision(dropped.astype(np.uint64), state["sha256"])
