"""`make bench-loader`: the train loader's tokens/s with and without fill-in-the-middle, on
one core, against the 124M step's tokens/s on a GPU (the planner's figure).

FIM re-encodes text on the CPU (model/fim.py: decode a piece, cut it, encode
three parts). This measures `TrainLoader.next_batch` of the 124M shape
(micro-batch 16 x 1024 tokens) on GPT-2 shards of real code (this Python's
standard library, built here), pinned to one core, at fim_rate 0 (the plain
windows), 0.5 (the default) and 1. It is measured both with the next batch made
in the loader's thread (as the trainer runs it) and without (the thread's
batch is waited for at once, so the figure is the CPU cost itself).

The GPU side is the planner's: 124M's training FLOPs per token (6N + 12 L C T,
model/hardware.py) at 35 % MFU of each card's dense bf16 peak. A loader rate
well above the GPU's means the loader cannot stall training.

    .venv/bin/python bench/loader_bench.py [--seconds 4] [--out docs/benchmarks/loader.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, machine
from model import fim, tokenizer
from model.hardware import flops_per_token, peak_tflops
from model.loader import TrainLoader, Windows
from model.shards import list_shards, write_shard

B, T = 16, 1024  # the 124M config's shape, the largest micro-batch the planner fits on 12 GB
N_NON_EMBEDDING = 123_689_472  # GPT-2 124M with the tied 50304-row head (model/hardware.py)
CARDS = ("NVIDIA GeForce RTX 4070", "NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3")
MFU = 0.35


def code_shards(folder: Path, tokens: int) -> Path:
    """Shards of real source text: each stdlib module a document, then end-of-text."""
    ids: list[int] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        ids += [*tokenizer.get().encode(path.read_text(encoding="utf-8", errors="replace")), 50256]
        if len(ids) >= tokens:
            break
    write_shard(folder, "train", 0, np.array(ids[:tokens], dtype=np.uint16))
    return folder


def rate(windows: Windows, fim_rate: float, ahead: bool, seconds: float) -> float:
    """Tokens per second of the loader's batches (host arrays; no device copy on the CPU):
    `next_batch` as the trainer calls it (ahead: the next one made in the loader's thread),
    or the batch itself made on the calling thread, nothing ahead (the CPU cost)."""
    rates = fim.Rates(fim_rate, 0.5) if fim_rate else None
    dl = TrainLoader(windows, B, shuffle=True, seed=1337, fim_rates=rates, tok=tokenizer.get())
    dl.next_batch()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if ahead:
            dl.next_batch()
        else:
            dl._make(n // T)  # the batch at this run position, made here and now
        n += B * T
    return n / (time.perf_counter() - t0)


def gpu_rates() -> list[tuple[str, float]]:
    per_token = flops_per_token(N_NON_EMBEDDING, 12, 768, T)
    out = []
    for card in CARDS:
        peak = peak_tflops(card, "bfloat16")
        assert peak is not None, card
        out.append((card, MFU * peak * 1e12 / per_token))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--tokens", type=int, default=3_000_000)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "loader.md")
    args = p.parse_args()
    box = machine()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, threads included
    with tempfile.TemporaryDirectory() as tmp:
        windows = Windows(
            list_shards(code_shards(Path(tmp), args.tokens), "train"), "train", T, 50304
        )
        rows = [
            (r, ahead, rate(windows, r, ahead, args.seconds))
            for r in (0.0, 0.5, 1.0)
            for ahead in ((False,) if r == 0 else (False, True))
        ]
    plain = rows[0][2]
    gpus = gpu_rates()
    lines = [
        "# Loader: tokens/s with and without fill-in-the-middle",
        "",
        f"{datetime.date.today()}, {box}, pinned to one core; "
        f"`python bench/loader_bench.py --seconds {args.seconds:g}`; micro-batch {B} x {T}, "
        "GPT-2 shards of this Python's standard library.",
        "",
        "| fim_rate | next batch made ahead | loader tokens/s | vs fim_rate 0 |",
        "| --- | --- | ---: | ---: |",
    ]
    for r, ahead, v in rows:
        made = "in the loader's thread" if ahead else "no (the CPU cost)"
        lines.append(f"| {r:g} | {made} | {v:,.0f} | {v / plain:.3f}x |")
    fim_cost = next(v for r, ahead, v in rows if r == 0.5 and not ahead)
    lines += [
        "",
        f"The 124M step on a GPU, the planner's figure at {MFU:.0%} MFU (bf16 dense peak):",
        "",
        "| GPU | 124M training tokens/s | loader at fim_rate 0.5 / GPU |",
        "| --- | ---: | ---: |",
    ]
    for card, v in gpus:
        lines.append(f"| {card} | {v:,.0f} | {fim_cost / v:.1f}x |")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out.write_text(text, encoding="utf-8")
    os.replace(tmp_out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
