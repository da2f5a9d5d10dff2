"""`manifest.json`, the shard folder's record: its one reader and its one writer.

The tokenize stage writes it (pipeline/tokenize/writer.py), atomically, at the
start, at every checkpoint and at the end; the trainer's data contract
(model/dataset.py), `make eval`'s document index, the report and tokenize's
rerun check read it through `read_manifest`, as a `Manifest`, never by string
keys. The JSON layout (docs/design.md) is unchanged from the untyped form, so
every manifest written before keeps reading:

    version, complete, settings, config, tokenizer, inputs, [ignored], shards,
    partial, partial_docs, dedup_digests, position, counts, files_skipped

`listed_but_missing` is the one place that checks a manifest's shards against
the folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.atomic import read_json_state, write_atomically
from model.errors import InputError

MANIFEST = "manifest.json"
VERSION = 1
SPLITS = ("train", "val")
TMP_SUFFIX = ".tmp"


def _per_split() -> dict[str, int]:
    return dict.fromkeys(SPLITS, 0)


@dataclass(frozen=True)
class ShardEntry:
    name: str  # `<split>_<NNNNNN>.npy`
    tokens: int
    docs: str | None = None  # a val shard's document index file


@dataclass
class Counts:
    """The document accounting: `read == tokenized + sum(skipped.values())` always."""

    read: int = 0
    tokenized: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    replaced_utf8: int = 0
    text_bytes: int = 0
    tokens: dict[str, int] = field(default_factory=_per_split)
    # split -> language -> {"documents", "bytes", "tokens"}
    languages: dict[str, dict[str, dict[str, int]]] = field(
        default_factory=lambda: {s: {} for s in SPLITS}
    )
    # language -> reason -> rows
    skipped_by_language: dict[str, dict[str, int]] = field(default_factory=dict)

    def balanced(self) -> bool:
        return self.read == self.tokenized + sum(self.skipped.values())


@dataclass
class Resume:
    """Where an unfinished run goes on: the first row of the next batch, and how much of
    each resume file (partial buffers, open document records, digests) is valid."""

    file_index: int = 0
    row_group: int = 0
    row: int = 0
    file: str | None = None  # the input at file_index, for a reader of the JSON
    partial: dict[str, int] = field(default_factory=_per_split)
    partial_docs: int = 0
    dedup_digests: int = 0
    token_offset: int = 0  # only older code wrote a non-zero one (it resumed mid-document)


@dataclass(kw_only=True)
class Manifest:
    complete: bool
    tokenizer: dict[str, Any]
    shards: dict[str, list[ShardEntry]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    counts: Counts = field(default_factory=Counts)
    settings: dict[str, Any] = field(default_factory=dict)  # the keys that shape the bytes
    config: dict[str, Any] = field(default_factory=dict)  # the whole config, for a reader
    inputs: list[dict[str, Any]] = field(default_factory=list)  # path, size, mtime_ns
    ignored: dict[str, Any] | None = None  # a folder's files left out, by reason
    files_skipped: list[dict[str, Any]] = field(default_factory=list)
    resume: Resume = field(default_factory=Resume)

    def total_tokens(self) -> int:
        return sum(self.counts.tokens.values())

    def listed_but_missing(self, folder: Path, fix: str) -> None:
        """Raise one line naming the first listed shard (or index) that is not there."""
        for entries in self.shards.values():
            for e in entries:
                for name in (e.name, e.docs):
                    if name is not None and not (Path(folder) / name).is_file():
                        raise InputError(
                            f"{Path(folder) / name} is listed in {Path(folder) / MANIFEST} "
                            f"but missing; {fix}"
                        )


def manifest_path(folder: Path) -> Path:
    return Path(folder) / MANIFEST


def write_manifest(folder: Path, m: Manifest) -> None:
    """Atomically replace the manifest: temporary name, fsync, rename, fsync the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    r = m.resume
    data: dict[str, Any] = {
        "version": VERSION,
        "complete": m.complete,
        "settings": m.settings,
        "config": m.config,
        "tokenizer": m.tokenizer,
        "inputs": m.inputs,
        **({"ignored": m.ignored} if m.ignored else {}),
        "shards": {
            s: [{k: v for k, v in asdict(e).items() if v is not None} for e in m.shards[s]]
            for s in SPLITS
        },
        "partial": r.partial,
        "partial_docs": r.partial_docs,
        "dedup_digests": r.dedup_digests,
        "position": {
            "file_index": r.file_index,
            "file": r.file,
            "row_group": r.row_group,
            "row": r.row,
        },
        "counts": asdict(m.counts),
        "files_skipped": m.files_skipped,
    }
    text = json.dumps(data, indent=1) + "\n"
    final = manifest_path(folder)
    write_atomically(
        final, lambda f: f.write(text.encode("utf-8")), final.with_name(final.name + TMP_SUFFIX)
    )


def read_manifest(folder: Path) -> Manifest | None:
    """The manifest of `folder`, or None when there is none; a damaged one is one line."""
    p = manifest_path(folder)
    fix = f"pass force=true to start over in {folder}"
    data = read_json_state(p, VERSION, "tokenize manifest", fix)
    if data is None:
        return None
    try:
        return _parse(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(f"{p}: a manifest with a malformed field ({e!r}); {fix}") from None


def _parse(data: dict[str, Any]) -> Manifest:
    pos = data.get("position") or {}
    listed = data.get("shards") or {}
    return Manifest(
        complete=data.get("complete") is True,
        tokenizer=dict(data.get("tokenizer") or {}),
        shards={s: [ShardEntry(**e) for e in listed.get(s, [])] for s in SPLITS},
        counts=Counts(**{**asdict(Counts()), **(data.get("counts") or {})}),
        settings=dict(data.get("settings") or {}),
        config=dict(data.get("config") or {}),
        inputs=list(data.get("inputs") or []),
        ignored=data.get("ignored"),
        files_skipped=list(data.get("files_skipped") or []),
        resume=Resume(
            file_index=int(pos.get("file_index", 0)),
            row_group=int(pos.get("row_group", 0)),
            row=int(pos.get("row", 0)),
            file=pos.get("file"),
            partial={**_per_split(), **(data.get("partial") or {})},
            partial_docs=int(data.get("partial_docs", 0)),
            dedup_digests=int(data.get("dedup_digests", 0)),
            token_offset=int(pos.get("token_offset", 0)),
        ),
    )
