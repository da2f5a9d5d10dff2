"""Tiny shards and configs shared by the trainer, smoke, resume and DDP tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from model.config import build
from model.shards import write_shard
from model.train_config import TrainConfig
from pipeline.tokenize import manifest

VOCAB = 256
TOKENIZER = {"name": "counting", "n_vocab": 200}  # the stream's ids are < 200
FIM_ON = {"vocab_size": 50304, "fim_rate": 0.5}  # with write_code_shards: FIM at the default rate


def write_tiny_shards(folder: Path, train_tokens: int = 40_000, val_tokens: int = 4_000) -> Path:
    """A learnable stream below VOCAB: counting runs with a seeded random start per run."""
    rng = np.random.default_rng(0)
    pieces = []
    total = 0
    while total < train_tokens + val_tokens:
        start = int(rng.integers(0, 200))
        run = np.arange(start, start + int(rng.integers(8, 40))) % 200  # ids < VOCAB
        pieces.append(run)
        total += len(run)
    stream = np.concatenate(pieces).astype(np.uint16)
    write_shard(folder, "train", 0, stream[: train_tokens // 2])
    write_shard(folder, "train", 1, stream[train_tokens // 2 : train_tokens])
    write_shard(folder, "val", 0, stream[train_tokens : train_tokens + val_tokens])
    manifest.write_for_shards(folder, TOKENIZER)
    return folder


def tiny_values(data: Path, out_dir: Path, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        data=str(data),
        out_dir=str(out_dir),
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=32,
        vocab_size=VOCAB,
        micro_batch=4,
        grad_accum=2,
        lr=1e-2,
        min_lr=1e-3,
        warmup_iters=2,
        max_iters=20,
        eval_interval=10,
        eval_iters=2,
        ckpt_interval=10,
        log_interval=5,
        compile=False,
        device="cpu",
        seed=7,
        fim_rate=0.0,  # the counting stream has no tokenizer to cut text with (model/fim.py)
    )
    values.update(overrides)
    return values


def tiny_config(data: Path, out_dir: Path, **overrides: Any) -> TrainConfig:
    return build(TrainConfig, tiny_values(data, out_dir, **overrides))


def write_config_yaml(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def write_code_shards(folder: Path, train_tokens: int = 40_000, val_tokens: int = 4_000) -> Path:
    """GPT-2 shards of real source text (this Python's standard library), each document
    followed by end-of-text, with a GPT-2 manifest: what the FIM loader cuts into examples."""
    import sysconfig

    from model import tokenizer

    ids: list[int] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")[:3000]  # many documents
        ids += [*tokenizer.get().encode(text), tokenizer.EOT]
        if len(ids) >= train_tokens + val_tokens:
            break
    stream = np.array(ids[: train_tokens + val_tokens], dtype=np.uint16)
    write_shard(folder, "train", 0, stream[:train_tokens])
    write_shard(folder, "val", 0, stream[train_tokens:])
    manifest.write_for_shards(folder, gpt2_tokenizer_info())
    return folder


def gpt2_tokenizer_info() -> dict[str, object]:
    """The manifest's tokenizer record of GPT-2 shards (what tokenize writes)."""
    from model import tokenizer

    return {
        "name": tokenizer.DEFAULT,
        "vocab_sha256": tokenizer.get().sha256,
        "special_tokens": tokenizer.get().special_tokens,
    }


def kill_after_first_checkpoint(
    proc: subprocess.Popen[Any], run: Path, kill: Callable[[], None], after: float, wait: float
) -> None:
    """Wait (up to `wait` s) for `run`'s first checkpoint, `after` s more (somewhere
    between checkpoints, maybe inside a save), then `kill()` the still running `proc`."""
    from model.checkpoint import list_checkpoints

    try:
        deadline = time.monotonic() + wait
        while not list_checkpoints(run) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.005)
        time.sleep(after)
        assert proc.poll() is None, "the run finished before it could be killed"
        kill()
    finally:
        proc.wait()
