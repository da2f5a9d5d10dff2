"""Training on a GPU, the 124M reference: time to a val loss, tokens/s, MFU and peak memory.

The comparison of `make bench-train` (bench/train_bench.py), for
configs/gpt2-124m.yaml on one GPU, bf16: the plain loop (nanoGPT's train.py
reduced to a step: full logits and F.cross_entropy inside the compiled
forward, fused AdamW, no synchronization in the step) against codegpt's
trainer with each loss (fused, lean, plain) and with Muon. Each loop trains
`--steps` steps of `--micro-batch` x 1024 tokens from the same initial weights
on the same shuffled windows of `--data` (the demo shards by default), one loop
after the other (a GPU's timing is steady; between two loops the compiled
graphs are dropped and the cache emptied, so each peak is its own). Every
`--eval-every` steps each is scored on the same fixed val windows. Reported
per loop: ms/step (the mean of the steps after the first `--warmup`, which
compile and are timed one by one; each stretch between two evals ends with a
synchronize, so a loop that never waits is timed as exactly as one that
does), tokens/s, MFU (model/hardware.py's peak for the card), peak GPU memory
of the training steps (max_memory_allocated, reset after every eval: the
bench's own full-logits eval is not the loop's), the val loss at the end,
and the training time to the plain loop's final val loss (compile steps
counted at the mean step; compile time reported on its own). A loop that
runs out of memory is one OOM row; the others still run.

`--micro-batch auto` (the default) takes 16, or the largest size below it
whose plain loop (the hungriest: full logits) the planner fits in the free
GPU memory: on a 12 GB card that is 8, where 16 would end the race in an OOM.

    python3 bench/train_gpu.py --out "$OUT/train.md"          # on a GPU (demo shards carried)
    python3 bench/train_gpu.py --tiny --steps 6             # on the CPU: a dry run
    python3 bench/train_gpu.py --loops plain,fused --steps 100

On a lent GPU machine this runs inside bench/gpu_session.sh, which carries
the demo shards and the vocabulary there; only $OUT comes back. Time on an
H200 (estimated, not yet measured): ~1 min a loop at 200 steps of 16 x 1024
tokens, most of it compiling.

`--speed` adds the older table: micro-batch 4/8/16 x compile on/off, codegpt's
default loop only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.memory_gpu import allow_recompiles, free_memory  # noqa: E402
from bench.train_bench import LOOPS, Curve, Loop, build, run_alone, shard_folder  # noqa: E402
from model import memory  # noqa: E402
from model.atomic import write_text  # noqa: E402
from model.config import load  # noqa: E402
from model.metrics import MfuMeter  # noqa: E402
from model.runtime import device_name, replace, resolve_precision  # noqa: E402
from model.train_config import TrainConfig  # noqa: E402

CONFIG = REPO / "configs" / "gpt2-124m.yaml"
TINY = ["n_layer=2", "n_head=2", "n_embd=64", "block_size=64", "vocab_size=512", "eval_iters=2"]


def overrides(args: argparse.Namespace) -> list[str]:
    out = [
        f"micro_batch={args.micro_batch}",  # a number by now (main resolves auto)
        "grad_accum=1",
        f"max_iters={args.steps}",
        f"warmup_iters={max(1, args.steps // 10)}",
        f"eval_iters={args.eval_iters}",
        "dtype=auto",
        f"compile={not args.tiny}",
        "fim_rate=0",  # the same left-to-right windows for every loop, the plain one too
    ]
    return out + (TINY if args.tiny else [])


def mfu_of(loop: Loop, tokens_per_s: float) -> float | None:
    cfg, model = loop.cfg, loop.model
    meter = MfuMeter(
        loop.device,
        resolve_precision(cfg, loop.device).name,  # dtype=auto: bf16, or fp16 on older cards
        model.num_params(non_embedding=True),
        cfg.n_layer,
        cfg.n_embd,
        cfg.block_size,
        cfg.peak_tflops,
    )
    return meter(tokens_per_s)


MICRO_BATCHES = (16, 8, 4, 2, 1)  # --micro-batch auto: 16, else the largest that fits


def pick_micro_batch(cfg: TrainConfig, budget: int, dtype: str) -> int:
    """16, or the largest of MICRO_BATCHES whose plain loop (full logits, the most memory
    of the loops) the planner fits in `budget` bytes; 1 when none does."""
    overhead = memory.Overhead.for_card(cfg.compile, nominal=False)
    for mb in MICRO_BATCHES:
        w = memory.Workload.from_train(replace(cfg, loss="plain"), mb, dtype)
        if memory.estimate(w, overhead).fits(budget):
            return mb
    return MICRO_BATCHES[-1]


class TrainPeak:
    """The peak GPU memory of the training steps alone: read before each eval, reset after
    it, so the bench's own eval (full logits for every loop) is in no loop's figure."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    @contextlib.contextmanager
    def around_eval(self) -> Iterator[None]:
        if self.device.type == "cuda":
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))
        yield
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)


def race_one(
    key: str, data: Path, tmp: Path, args: argparse.Namespace, target: float | None
) -> dict[str, Any]:
    """One loop's row; {"key": key, "oom": True} when it runs out of GPU memory."""
    device = torch.device("cpu" if args.tiny else "cuda")
    free_memory()  # the last loop's graphs and cached blocks
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    peaks = TrainPeak(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    loop: Loop | None = None
    try:
        loop = build(key, data, tmp / "run", overrides(args), CONFIG, device)
        curve = run_alone(
            loop,
            args.steps,
            args.eval_every,
            target,
            int(1.5 * args.steps),
            warmup=args.warmup,
            sync=sync,
            around_eval=peaks.around_eval,
        )
    except torch.cuda.OutOfMemoryError:
        del loop  # the next loop needs the memory: free_memory runs before it
        print(json.dumps({"key": key, "oom": True}), file=sys.stderr, flush=True)
        return {"key": key, "oom": True}
    warm = curve.ms[: args.warmup]
    after = curve.ms[args.warmup :] or curve.ms
    steady = sum(after) / len(after)  # each stretch's sum is exact (run_alone), not each step
    compile_s = max(0.0, sum(warm) - steady * len(warm)) / 1000
    curve.ms[: args.warmup] = [steady] * len(warm)  # compile is not training
    tps = loop.cfg.tokens_per_step * 1000 / steady
    row = {
        "key": key,
        "ms": steady,
        "tokens_per_s": tps,
        "mfu": mfu_of(loop, tps) if device.type == "cuda" else None,
        "peak_gb": peaks.peak / 2**30 if device.type == "cuda" else None,
        "compile_s": compile_s,
        "curve": curve,
    }
    del loop
    free_memory()
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), file=sys.stderr, flush=True)
    return row


def speed_table(data: Path, tmp: Path, args: argparse.Namespace) -> list[str]:
    """codegpt's default loop at micro-batch 4/8/16 x compile on/off: ms/step, MFU, memory."""
    lines = ["", "| micro-batch | compile | ms/step | tokens/s | MFU | peak memory |"]
    lines.append("| ---: | --- | ---: | ---: | ---: | ---: |")
    for mb in (4, 8, 16):
        for comp in (True, False):
            extra = [*overrides(args), f"micro_batch={mb}", f"compile={comp and not args.tiny}"]
            device = torch.device("cpu" if args.tiny else "cuda")
            free_memory()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            loop: Loop | None = None
            try:
                loop = build("fused", data, tmp / f"speed-{mb}-{comp}", extra, CONFIG, device)
                times = []
                for k in range(args.warmup + 10):
                    t0 = time.perf_counter()
                    loop.step(k)  # the trainer synchronizes once a step (its loss guard)
                    times.append(1000 * (time.perf_counter() - t0))
            except torch.cuda.OutOfMemoryError:
                lines.append(f"| {mb} | {'on' if comp else 'off'} | OOM | | | |")
                del loop
                continue
            ms = statistics.median(times[args.warmup :])
            tps = loop.cfg.tokens_per_step * 1000 / ms
            mfu = mfu_of(loop, tps) if device.type == "cuda" else None
            mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            lines.append(
                f"| {mb} | {'on' if comp else 'off'} | {ms:.1f} | {tps:,.0f} | "
                f"{_pct(mfu)} | {_gb(mem)} |"
            )
            del loop
    free_memory()
    return lines


def _pct(v: float | None) -> str:
    return f"{100 * v:.1f}%" if v is not None else "n/a"


def _gb(v: float | None) -> str:
    return f"{v:.2f} GB" if v is not None else "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (a dry run)")
    ap.add_argument("--data", default="data/shards/demo", help="a shard folder")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--micro-batch", default="auto", help="a number, or auto (see above)")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3, help="first steps (compile) not timed")
    ap.add_argument("--loops", default=",".join(k for k, _, _ in LOOPS))
    ap.add_argument("--speed", action="store_true", help="also the micro-batch x compile table")
    ap.add_argument("--out", help="also write the markdown here")
    ap.add_argument("--json", help="also write the figures here (bench/gpu_summary.py)")
    args = ap.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA GPU: run on a GPU, or pass --tiny for a CPU dry run", file=sys.stderr)
        return 2
    allow_recompiles()
    args.micro_batch = resolve_micro_batch(args)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if args.tiny:
            base = load(TrainConfig, CONFIG, [*overrides(args), "device=cpu"])
            data, desc = shard_folder(base, tmp / "shards", tiny=True)
        else:
            data, desc = REPO / args.data, args.data
            if not (data / "manifest.json").is_file():
                print(f"no shards in {data}: carry data/shards/demo, or --data", file=sys.stderr)
                return 2
        keys = [k for k in args.loops.split(",") if k]
        rows: list[dict[str, Any]] = []
        target = None
        for k in ["plain", *(k for k in keys if k != "plain")] if "plain" in keys else keys:
            rows.append(race_one(k, data, tmp, args, target))
            if k == "plain" and not rows[-1].get("oom"):  # the target the others race to
                target = rows[-1]["curve"].evals[-1][1]  # (and past the end, to 1.5x steps)
        extra = speed_table(data, tmp, args) if args.speed else []
    text = render(rows, desc, args) + "\n".join(extra) + "\n"
    print(text)
    if args.out:
        write_text(Path(args.out), text)
    if args.json:
        write_text(Path(args.json), json.dumps(figures(rows, args), indent=1))
    return 0


def resolve_micro_batch(args: argparse.Namespace) -> int:
    """--micro-batch as a number: `auto` asks the planner (pick_micro_batch) on a GPU and
    takes 4 on the CPU (--tiny)."""
    if args.micro_batch != "auto":
        return int(args.micro_batch)
    if args.tiny:
        return 4
    cfg = load(TrainConfig, CONFIG, [o for o in overrides(args) if not o.startswith("micro_batch")])
    device = torch.device("cuda", torch.cuda.current_device())
    free, _ = torch.cuda.mem_get_info(device)
    dtype = resolve_precision(cfg, device).name
    mb = pick_micro_batch(cfg, free + torch.cuda.memory_reserved(device), dtype)
    print(f"bench: micro-batch {mb} (auto: the planner's fit for the plain loop)", file=sys.stderr)
    return mb


def figures(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """What bench/gpu_summary.py reads: per loop tokens/s, MFU, peak; the ratio to plain."""
    ran = {r["key"]: r for r in rows if not r.get("oom")}
    out: dict[str, Any] = {
        "device": device_name(torch.device("cuda")) if not args.tiny else "cpu (tiny dry run)",
        "micro_batch": args.micro_batch,
        "loops": {
            r["key"]: {k: r.get(k) for k in ("tokens_per_s", "mfu", "peak_gb", "ms", "oom")}
            for r in rows
        },
    }
    for key in ("fused", "muon"):
        if "plain" in ran and key in ran:
            out[f"{key}_vs_plain"] = ran[key]["tokens_per_s"] / ran["plain"]["tokens_per_s"]
    return out


def render(rows: list[dict[str, Any]], data: str, args: argparse.Namespace) -> str:
    dev = device_name(torch.device("cuda")) if not args.tiny else "cpu (tiny dry run)"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    model = "tiny (2 x 64, block 64)" if args.tiny else "GPT-2 124M (12 x 768, block 1024)"
    names = {k: n for k, n, _ in LOOPS}
    by = {r["key"]: r for r in rows if not r.get("oom")}
    base = by.get("plain")
    target = base["curve"].evals[-1][1] if base else None
    base_s = None
    if base and target is not None:
        hit = base["curve"].reaches(target)
        base_s = base["curve"].seconds_at(hit) if hit is not None else None
    lines = [
        f"## Time to a val loss: {model} on {dev}",
        "",
        f"{now}, torch {torch.__version__}, bf16 autocast, micro_batch {args.micro_batch} x "
        f"grad_accum 1, {args.steps} steps, val every {args.eval_every} on {args.eval_iters} "
        f"fixed batches, data {data}; `bench/train_gpu.py{' --tiny' if args.tiny else ''}`",
        f"target: the plain loop's val loss after {args.steps} steps"
        + (f", {target:.4f}" if target is not None else " (not run)"),
        "",
        "| loop | ms/step | tokens/s | MFU | peak memory | compile s | val at the last step | "
        "steps to target | seconds to target | vs plain loop |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.get("oom"):
            lines.append(f"| {names[r['key']]} | OOM | | | | | | | | |")
            continue
        c: Curve = r["curve"]
        end = c.loss_at(args.steps)
        hit = c.reaches(target) if target is not None else None
        secs = c.seconds_at(hit) if hit is not None else None
        ratio = f"{secs / base_s:.2f}x" if secs is not None and base_s else "-"
        lines.append(
            f"| {names[r['key']]} | {r['ms']:.1f} | {r['tokens_per_s']:,.0f} | {_pct(r['mfu'])} | "
            f"{_gb(r['peak_gb'])} | {r['compile_s']:.0f} | {end:.4f} | "
            f"{f'{hit:.0f}' if hit is not None else '-'} | "
            f"{f'{secs:.1f}' if secs is not None else '-'} | {ratio} |"
        )
    if base and "fused" in by:
        speed = by["fused"]["tokens_per_s"] / base["tokens_per_s"]
        line = (
            f"codegpt (fused loss, AdamW) / the plain loop, tokens/s: {speed:.2f}x (target >= 1.3x)"
        )
        if "muon" in by:
            muon = by["muon"]["tokens_per_s"] / base["tokens_per_s"]
            line += f"; codegpt's default (fused loss, Muon): {muon:.2f}x"
        lines += ["", line]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
