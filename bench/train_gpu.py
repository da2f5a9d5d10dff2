"""Training speed of the 124M reference on a GPU: micro-batch 4/8/16 x compile on/off, bf16.

For each setting: build the real trainer (configs/gpt2-124m.yaml, grad_accum 1
so one step is one micro-batch), run warm-up steps (compilation happens
there), then time `--steps` steps, and report ms/step, tokens/s, MFU (from
model/hardware.py) and peak GPU memory. A setting that runs out of memory is
reported as OOM and the others go on. Data: random token shards in a
temporary folder (speed does not depend on the tokens).

    .venv/bin/python bench/train_gpu.py                 # on a GPU: the table
    .venv/bin/python bench/train_gpu.py --tiny          # on the CPU: a tiny model, to know it works
    .venv/bin/python bench/train_gpu.py --out docs/benchmarks/train-gpu.md

Prints a markdown table (and writes it with --out) with the device and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.config import load  # noqa: E402
from model.runtime import device_name  # noqa: E402
from model.shards import write_shard  # noqa: E402
from model.train_config import TrainConfig  # noqa: E402
from model.trainer import Trainer  # noqa: E402
from pipeline.tokenize import manifest  # noqa: E402

TINY = ["n_layer=2", "n_head=2", "n_embd=64", "block_size=64", "device=cpu"]


def make_shards(folder: Path, tokens: int) -> Path:
    rng = np.random.default_rng(0)
    write_shard(folder, "train", 0, rng.integers(0, 50257, tokens, dtype=np.uint16))
    write_shard(folder, "val", 0, rng.integers(0, 50257, 100_000, dtype=np.uint16))
    manifest.write_for_shards(folder, {"name": "random", "n_vocab": 50257})
    return folder


def measure(cfg: TrainConfig, run: Path, warmup: int, steps: int) -> dict[str, Any]:
    device = torch.device("cuda") if cfg.device != "cpu" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(cfg, device, run)
    for _ in range(warmup):
        trainer.train_step(cfg.lr)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        result = trainer.train_step(cfg.lr)  # syncs once per step (loss guard)
    ms = 1000 * (time.perf_counter() - t0) / steps
    tps = cfg.tokens_per_step * 1000 / ms
    mfu = trainer.mfu(tps)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del trainer
    return {"ms": ms, "tokens_per_s": tps, "mfu": mfu, "peak_mem_gb": mem, "loss": result.loss}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (a dry run)")
    ap.add_argument("--micro-batches", default="4,8,16")
    ap.add_argument("--compile", default="on,off", help="on, off or on,off")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", help="also write the markdown table here")
    args = ap.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA GPU: run on a GPU, or pass --tiny for a CPU dry run", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        data = make_shards(tmp / "shards", 2_000_000 if args.tiny else 20_000_000)
        for mb in (int(v) for v in args.micro_batches.split(",")):
            for comp in args.compile.split(","):
                overrides = [f"data={data}", f"out_dir={tmp / 'run'}", f"micro_batch={mb}"]
                overrides += ["grad_accum=1", f"compile={comp == 'on'}", "dtype=auto"]
                overrides += TINY if args.tiny else ["device=cuda"]
                cfg = load(TrainConfig, REPO / "configs" / "gpt2-124m.yaml", overrides)
                row: dict[str, Any] = {"micro_batch": mb, "compile": comp}
                try:
                    row.update(measure(cfg, tmp / "run", args.warmup, args.steps))
                except torch.cuda.OutOfMemoryError:
                    row["oom"] = True
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    table = render(rows, args)
    print(table)
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
    return 0


def render(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    dev = device_name(torch.device("cuda")) if not args.tiny else "cpu (tiny dry run)"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    model = "tiny (2 x 64, block 64)" if args.tiny else "GPT-2 124M (12 x 768, block 1024)"
    lines = [
        f"## Training speed: {model} on {dev}",
        "",
        f"{now}, torch {torch.__version__}, dtype auto, grad_accum 1, "
        f"{args.warmup} warm-up + {args.steps} timed steps; "
        f"`bench/train_gpu.py{' --tiny' if args.tiny else ''}`",
        "",
        "| micro-batch | compile | ms/step | tokens/s | MFU | peak memory |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.get("oom"):
            lines.append(f"| {r['micro_batch']} | {r['compile']} | OOM | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_mem_gb']:.2f} GB" if r["peak_mem_gb"] is not None else "n/a"
        lines.append(
            f"| {r['micro_batch']} | {r['compile']} | {r['ms']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {mfu} | {mem} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
