"""What a data stage's output is a function of, and what changed since it was made.

Both data stages record their input files (path, size, mtime) and the settings that
shape their output beside it (tokenize's manifest.json, dedup's dedup.json), and both
refuse a rerun whose request differs; tokenize also checks a dedup decision against
its own inputs and rules the same way. This is that one check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Keys added after some outputs were made, and the value such an output was made with:
# a state file without the key is not "changed" for it (github-code was the only schema,
# and its columns the only ones read).
IMPLIED = {
    "schema": "github-code",
    "repo_column": "repo_name",
    "path_column": "path",
    "language_column": "language",
}


def input_entries(files: list[Path]) -> list[dict[str, Any]]:
    """What the output depends on for each input file: path, size, mtime (ns)."""
    out = []
    for f in files:
        st = f.stat()
        out.append({"path": str(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


@dataclass(frozen=True)
class Made:
    """What an output was (or is to be) made from: its inputs, the settings that shape it
    and, for shards, the tokenizer."""

    inputs: list[dict[str, Any]]
    settings: dict[str, Any]
    tokenizer: dict[str, Any] | None = None


def differences(old: Made, new: Made) -> list[str]:
    """Human-readable list of what differs between what an output was made from and a new
    run's request."""
    changes: list[str] = []
    before = {e["path"]: e for e in old.inputs}
    now = {e["path"]: e for e in new.inputs}
    for p in sorted(set(before) - set(now)):
        changes.append(f"input {p} removed")
    for p in sorted(set(now) - set(before)):
        changes.append(f"input {p} added")
    for p in sorted(set(now) & set(before)):
        for key in ("size", "mtime_ns"):
            if before[p].get(key) != now[p][key]:
                changes.append(f"input {p} {key} {before[p].get(key)} -> {now[p][key]}")
                break
    old_cfg = {**IMPLIED, **old.settings}
    for key in sorted(set(new.settings) | set(old.settings)):
        if old_cfg.get(key) != new.settings.get(key):
            changes.append(f"{key} {old_cfg.get(key)!r} -> {new.settings.get(key)!r}")
    was, tokenizer = old.tokenizer, new.tokenizer
    if isinstance(was, dict) and isinstance(tokenizer, dict):
        if was.get("name", "gpt2") != tokenizer.get("name"):
            changes.append(f"tokenizer {was.get('name', 'gpt2')} -> {tokenizer.get('name')}")
            return changes
        # a manifest from before the special tokens (or the number of ids) were recorded:
        # the same encoder, whose shards hold no sentinel (documents are encoded as
        # ordinary text either way)
        was = {**{k: v for k, v in tokenizer.items() if k not in was}, **was}
    if was != tokenizer:
        changes.append(f"tokenizer {was} -> {tokenizer}")
    return changes
