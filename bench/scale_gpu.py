"""Bigger models on one GPU: activation checkpointing's memory and cost, against the plan.

For GPT-2 124M and 350M (configs/gpt2-124m.yaml, gpt2-350m.yaml), each micro-batch
given, without and with activation checkpointing (every block recomputed in
backward, `activation_checkpointing: full`): the planner's peak of a training
micro-step (model/memory.py) against torch.cuda.max_memory_allocated() (goal:
within 10 %), then tokens/s and MFU over a few optimizer steps of 32 sequences.
bf16 autocast, the fused loss, AdamW (the planner's Workload default).

FSDP needs several GPUs: a lent machine has one, so `parallel: fsdp` is tested on
the CPU with gloo (tests/model/test_fsdp.py) and planned (make plan gpus=N), not
measured here.

    python3 bench/scale_gpu.py --out "$OUT/scale.md" --json "$OUT/scale.json"   # on a GPU
    python3 bench/scale_gpu.py --tiny                    # on the CPU: a dry run of the code
    python3 bench/scale_gpu.py --models 350m --micro-batches 8,16 --compile on

On a lent GPU machine it runs after bench/gpu_session.sh's parts when time is left
(it is not one of them); only what is written under $OUT comes back. Time on an
H200, estimated: compile off, 124M and 350M at 4 and 8, about 2 minutes.

On the CPU (--tiny) the "measured" peak is the fake-tensor trace
(model.memtrace.trace_peaks) of the tiny shape, and the speed is the CPU's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from memory_gpu import GPT2, SEQUENCES, TINY, Run, bench_device, free_memory, speed  # noqa: E402

from model import hardware  # noqa: E402
from model import memory as plan  # noqa: E402
from model.atomic import write_text  # noqa: E402
from model.memtrace import trace_peaks  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    "124m": GPT2,
    "350m": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50304),
    "tiny": TINY,
}


def workload(shape: dict[str, Any], mb: int, ac: bool, comp: bool) -> plan.Workload:
    return plan.Workload(**shape, micro_batch=mb, compile=comp, checkpoint=ac)


def measured_peak(run: Run | None, w: plan.Workload) -> int | None:
    """Peak allocated over a train micro-step with the previous one's gradients present
    (as the plan counts it); None when it ran out of memory."""
    if run is None:  # the CPU: the fake-tensor trace of the real model
        return trace_peaks(w)[0]
    try:
        run.step(w.micro_batch, 1)  # compiles this shape, creates AdamW's states
        run.sync()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(run.device)
        run.step(w.micro_batch, 2)
        run.sync()
        return torch.cuda.max_memory_allocated(run.device)
    except torch.cuda.OutOfMemoryError:
        run.opt.zero_grad(set_to_none=True)
        return None


def one_setting(
    name: str, ac: bool, sizes: list[int], device: torch.device, comp: bool, steps: int
) -> list[dict[str, Any]]:
    shape = SHAPES[name]
    run = Run(shape, device, "fused", comp)
    run.model.cfg.checkpoint_blocks = ac  # read at each forward (GPT.hidden)
    n = run.model.num_params(non_embedding=True)
    rows = []
    try:
        for mb in sorted(sizes):
            w = workload(shape, mb, ac, comp)
            predicted = plan.estimate(w, plan.Overhead(0, 0)).peak_train
            got = measured_peak(run if device.type == "cuda" else None, w)
            row: dict[str, Any] = {"model": name, "ac": ac, "micro_batch": mb}
            row |= {"predicted": predicted, "measured": got}
            if got is None:
                rows.append(row | {"oom": True})
                break
            tps = speed(run, mb, steps)
            fpt = hardware.flops_per_token(
                n, shape["n_layer"], shape["n_embd"], shape["block_size"]
            )
            peak = (
                hardware.peak_tflops(torch.cuda.get_device_name(device), "bfloat16")
                if (device.type == "cuda")
                else None
            )
            mfu = hardware.mfu(tps, fpt, peak) if peak else None
            rows.append(row | {"error": predicted / got - 1, "tokens_per_s": tps, "mfu": mfu})
            print(rows[-1], file=sys.stderr, flush=True)
    finally:
        del run
        free_memory()
    return rows


def render(rows: list[dict[str, Any]], unit: int, title: str) -> list[str]:
    u = "MiB" if unit == 2**20 else "GiB"
    lines = [
        title,
        "",
        f"| model | AC | micro-batch | planned peak {u} | measured {u} | error | tokens/s | MFU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        head = f"| {r['model']} | {'full' if r['ac'] else 'none'} | {r['micro_batch']} | "
        head += f"{r['predicted'] / unit:.2f} | "
        if r.get("oom"):
            lines.append(head + "OOM | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
        lines.append(
            head + f"{r['measured'] / unit:.2f} | {100 * r['error']:+.1f} % | "
            f"{r['tokens_per_s']:,.0f} | {mfu} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (a dry run)")
    ap.add_argument("--models", default="124m,350m", help="124m, 350m or both")
    ap.add_argument("--micro-batches", default="4,8")
    ap.add_argument("--compile", default="off", choices=("off", "on"))
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps a setting")
    ap.add_argument("--out", help="also write the markdown here")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    device = bench_device(args.tiny)
    if device is None:
        return 2
    models = ["tiny"] if args.tiny else args.models.split(",")
    sizes = [int(v) for v in args.micro_batches.split(",")]
    comp = args.compile == "on" and device.type == "cuda"
    rows = [
        r
        for name in models
        for ac in (False, True)
        for r in one_setting(name, ac, sizes, device, comp, args.steps)
    ]
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (tiny dry run)"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = (
        f"## Activation checkpointing against the plan on {dev} ({now}, torch "
        f"{torch.__version__}, bf16, compile {'on' if comp else 'off'}, {SEQUENCES} "
        "sequences a step)"
    )
    text = "\n".join(render(rows, 2**20 if args.tiny else 2**30, title))
    print(text)
    if args.out:
        write_text(Path(args.out), text + "\n")
    if args.json:
        write_text(Path(args.json), json.dumps({"device": dev, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
