"""The near-dedup decision: which input rows the dedup stage drops. Its one writer and reader.

In the dedup stage's output folder:

- `near_duplicates.npy`: the dropped rows, sorted, as uint64 row ids
  `file_index << 40 | row within the file` (file_index in the sorted input
  list; up to 2**24 files of 2**40 rows, no footer needed to number them);
- `dedup.json` (`DedupState`, a typed record: `read_state` its one reader,
  `write_progress` and `write` its writers), replaced atomically at every
  checkpoint of the stage and written last: the inputs (path, size, mtime)
  and the rules the decision was made with, its parameters, its counts, the
  sha256 of `near_duplicates.npy`; while unfinished, where signing goes on.

Tokenize (`near_dedup: <folder>`) reads both, refuses a decision made for other
inputs or rules (one line naming what differs), and skips the listed rows as
`near_duplicate`; the sha256 goes into its manifest's settings, so a new
decision means a new tokenize.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model.atomic import read_json_state, write_atomically, write_text
from model.errors import InputError, StateError
from pipeline.corpus import inputs as inputslib
from pipeline.corpus.batches import Position

STATE = "dedup.json"
DROPPED = "near_duplicates.npy"
VERSION = 1
ROW_BITS = 40


def row_ids(file_index: int, first_row: int, n: int) -> np.ndarray:
    """The ids of rows [first_row, first_row + n) of input file `file_index`."""
    return (np.uint64(file_index) << np.uint64(ROW_BITS)) + np.arange(
        first_row, first_row + n, dtype=np.uint64
    )


@dataclass
class DedupCounts:
    read: int = 0
    text_bytes: int = 0
    signed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # by rule
    dropped: int = 0  # set by the clustering
    clusters: int = 0


@dataclass(kw_only=True)
class DedupState:
    """`dedup.json` as a record: what the decision is made from, where signing goes on, the
    counts; `read_state` is its one reader, `write_progress` and `write` its writers."""

    inputs: list[dict[str, Any]]
    settings: dict[str, Any]  # the keys that shape the decision
    rules: dict[str, Any]  # tokenize's rule keys it applied (tokenize must use the same)
    params: dict[str, int]  # num_perm, bands, rows, shingle
    partitions: int
    records: list[int] | None = None  # valid band records per partition file
    position: Position = field(default_factory=Position)
    phase: Literal["sign", "cluster"] = "sign"
    counts: DedupCounts = field(default_factory=DedupCounts)
    files_skipped: list[dict[str, Any]] = field(default_factory=list)
    ignored: dict[str, Any] | None = None
    complete: bool = False
    sha256: str | None = None  # of near_duplicates.npy, once complete

    def made(self) -> inputslib.Made:
        return inputslib.Made(self.inputs, self.settings)


def _json(state: DedupState) -> str:
    data: dict[str, Any] = {"version": VERSION, **asdict(state)}
    data["position"] = state.position._asdict()
    if state.ignored is None:
        del data["ignored"]
    if state.complete:
        del data["position"]
        data["dropped"] = DROPPED
    else:
        del data["sha256"]
    return json.dumps(data, indent=1) + "\n"


def write(folder: Path, state: DedupState, dropped: np.ndarray) -> None:
    """The dropped ids, then the state that points at them (complete: true)."""
    dropped = np.unique(dropped.astype(np.uint64))
    path = Path(folder) / DROPPED
    write_atomically(path, lambda f: np.save(f, dropped, allow_pickle=False))
    state.complete, state.sha256 = True, hashlib.sha256(path.read_bytes()).hexdigest()
    write_text(Path(folder) / STATE, _json(state))


def write_progress(folder: Path, state: DedupState) -> None:
    """The unfinished stage's resume state (complete: false), atomically."""
    write_text(Path(folder) / STATE, _json(state))


def read_state(folder: Path) -> DedupState | None:
    """The stage's dedup.json, or None when there is none; a damaged one is one line."""
    p = Path(folder) / STATE
    fix = "rerun `make dedup` with force=true"
    data = read_json_state(p, VERSION, "dedup state", fix)
    if data is None:
        return None
    try:
        pos = data.get("position") or {}
        return DedupState(
            inputs=list(data["inputs"]),
            settings=dict(data["settings"]),
            rules=dict(data["rules"]),
            params=dict(data["params"]),
            partitions=int(data["partitions"]),
            records=data.get("records"),
            position=Position(pos.get("file_index", 0), pos.get("row_group", 0), pos.get("row", 0)),
            phase=data.get("phase", "sign"),
            counts=DedupCounts(**data["counts"]),
            files_skipped=list(data.get("files_skipped") or []),
            ignored=data.get("ignored"),
            complete=data.get("complete") is True,
            sha256=data.get("sha256"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{p}: a dedup state with a malformed field ({e!r}); {fix}") from None


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
    if state is None or not state.complete:
        raise StateError(f"{folder / STATE}: no finished near-dedup decision; {fix}")
    # the rules as "settings": tokenize's rule keys must be the ones the decision applied
    changed = inputslib.differences(
        inputslib.Made(state.inputs, state.rules), inputslib.Made(inputs, rules)
    )
    if changed:
        raise StateError(
            f"{folder / STATE} was made for other inputs or rules ({'; '.join(changed[:5])}); {fix}"
        )
    path = folder / DROPPED
    try:
        dropped = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({e}); {fix} with force=true") from None
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if sha != state.sha256:
        raise StateError(f"{path} does not match {folder / STATE}; {fix} with force=true")
    return Decision(dropped.astype(np.uint64), sha)
