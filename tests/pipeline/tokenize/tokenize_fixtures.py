"""Real parquet inputs for the tokenize tests, and helpers to run the stage and read shards.

Documents are slices of real source files from Python's standard library
(sorted, so every machine builds the same corpus from the same Python), in the
github-code schema; repositories are spread so that val_fraction=0.2 puts a
few of them in val.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from model import shards, tokenizer
from pipeline.__main__ import main
from pipeline.corpus.batches import TRAIN, VAL
from pipeline.tokenize.worker import split_of, split_threshold
from tests.conftest import REPO

SCHEMA = pa.schema(
    [
        ("code", pa.string()),
        ("repo_name", pa.string()),
        ("path", pa.string()),
        ("language", pa.string()),
    ]
)


def corpus(n: int = 300, max_chars: int = 1500, offset: int = 0) -> list[dict[str, Any]]:
    """n documents of real Python code: slices of stdlib modules."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))[offset:]
    docs = []
    for i in range(n):
        f = files[i % len(files)]
        text = f.read_text(encoding="utf-8", errors="replace")
        start = (i // len(files)) * max_chars
        docs.append(
            {
                "code": text[start : start + max_chars] or text[:max_chars],
                "repo_name": f"org{i % 7}/repo{i % 23}",
                "path": f.name,
                "language": "Python" if i % 5 else "Markdown",
            }
        )
    return docs


def write_parquet(
    path: Path,
    docs: list[dict[str, Any]],
    row_group_size: int = 64,
    schema: pa.Schema = SCHEMA,
    compression: str = "zstd",
) -> Path:
    cols = {name: [d.get(name) for d in docs] for name in schema.names}
    table = pa.table(cols, schema=schema)
    pq.write_table(table, path, row_group_size=row_group_size, compression=compression)
    return path


def make_input(folder: Path, docs: list[dict[str, Any]], files: int = 3, **kw: Any) -> Path:
    """Spread docs over `files` parquet files part-0.parquet... in order."""
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(docs) // files)
    for k in range(files):
        write_parquet(folder / f"part-{k}.parquet", docs[k * per : (k + 1) * per], **kw)
    return folder


# Every rule that can drop a document, off: the tests that compare the shards with a plain
# encoding of the corpus use this; the rules' own tests turn them on (test_tokenize_rules.py).
RULES_OFF: dict[str, Any] = {
    "dedup": "none",
    "near_dedup": "",
    "max_line_chars": 0,
    "max_mean_line_chars": 0,
    "min_alnum_fraction": 0,
    "drop_generated": False,
}


def args(src: Path, out: Path, **over: Any) -> list[str]:
    base: dict[str, Any] = {
        "input": src,
        "output": out,
        "shard_tokens": 5000,
        "val_fraction": 0.2,
        "workers": 1,
        "batch_bytes": 20000,
        "max_rss_gb": 64,
        "min_available_gb": 0,
        **RULES_OFF,
    }
    base.update(over)
    return [f"{k}={v}" for k, v in base.items()]


def tokenize(src: Path, out: Path, **over: Any) -> int:
    """Run the stage in this process, as `python -m pipeline tokenize` would."""
    return main(["tokenize", *args(src, out, **over)])


def tokenize_subprocess(src: Path, out: Path, **over: Any) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "pipeline", "tokenize", *args(src, out, **over)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_split(out: Path, split: str) -> np.ndarray:
    paths = shards.list_shards(out, split)
    if not paths:
        return np.empty(0, dtype=np.uint16)
    return np.concatenate([np.load(p) for p in paths])  # plain np.load, as build-nanogpt


def expected(docs: list[dict[str, Any]], val_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """What the shards must hold: each kept doc's ids + EOT, in order, per split."""
    th = split_threshold(val_fraction)
    parts: dict[int, list[int]] = {TRAIN: [], VAL: []}
    for d in docs:
        s = split_of(d["repo_name"].encode(), th)
        parts[s].extend([*tokenizer.get().encode(d["code"]), tokenizer.EOT])
    return {
        "train": np.array(parts[TRAIN], dtype=np.uint16),
        "val": np.array(parts[VAL], dtype=np.uint16),
    }


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.npy"))}
