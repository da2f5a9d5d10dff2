"""The memory planner against the GPU, and the story's 12 GB card: one call on a lent GPU.

Part A: for the 124M config, micro-batch 1, 2, 4, 8, 16, compile off and on,
the planner's prediction (model/plan.py) against torch.cuda.max_memory_allocated()
(tensors) and max_memory_reserved() (the caching allocator's segments) for a
training step (the second micro-step of an accumulation, so gradients exist,
as in the plan) and for an eval step. Target: within 10 %.

Part B, the story: the allocator is held to what a 12 GB card leaves PyTorch
(torch.cuda.set_per_process_memory_fraction), 32 sequences per step. The
plain full-logits loss at micro-batch 8 should run out of memory; the lean
and fused losses should fit 8 or more. For each size that runs: tokens/s and
MFU against the same loss at micro-batch 4.

    .venv/bin/python bench/memory_gpu.py                   # on a GPU: both tables (~10 min)
    .venv/bin/python bench/memory_gpu.py --tiny            # on the CPU: a dry run of the code
    .venv/bin/python bench/memory_gpu.py --parts b --out docs/benchmarks/memory-gpu.md
    .venv/bin/python bench/memory_gpu.py --parts a --loss lean      # part A for another loss

On the CPU (--tiny) there is no allocator to read: the "measured" columns are
the fake-tensor trace (model.memtrace.trace_peaks) and part B has no memory cap.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model import hardware  # noqa: E402
from model import memory as plan  # noqa: E402
from model.atomic import write_text  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from model.memtrace import trace_peaks  # noqa: E402
from model.runtime import enable_fast_math  # noqa: E402

GPT2: dict[str, Any] = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
TINY: dict[str, Any] = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512)
SEQUENCES = 32  # per optimizer step, as configs/gpt2-124m.yaml (4 x 8)
UNIT: dict[str, Any] = {"name": "GiB", "bytes": 2**30}  # MiB for --tiny


def _u(n: int) -> str:
    return f"{n / UNIT['bytes']:.2f}"


class Run:
    """A model, its AdamW and the (compiled) forward, for one setting."""

    def __init__(self, shape: dict[str, Any], device: torch.device, loss: str, comp: bool) -> None:
        torch.manual_seed(0)
        self.device = device
        self.model = GPT(GPTConfig(**shape, loss=loss)).to(device)  # plain: the story's head
        # AdamW, as the planner's Workload below assumes by default
        self.opt = self.model.configure_optimizer(0.1, 6e-4, (0.9, 0.95), device.type, "adamw")
        self.fwd: Any = torch.compile(self.model) if comp else self.model
        self.dtype = (
            torch.bfloat16
            if device.type == "cpu" or torch.cuda.is_bf16_supported()
            else torch.float16
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.vocab = shape["vocab_size"]
        self.block = shape["block_size"]

    def batch(self, mb: int) -> torch.Tensor:
        return torch.randint(0, self.vocab, (mb, self.block), device=self.device)

    def step(self, mb: int, accum: int) -> None:
        for _ in range(accum):
            x = self.batch(mb)
            with torch.autocast(self.device.type, dtype=self.dtype):
                _, loss = self.fwd(x, x)
            self.scaler.scale(loss / accum).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval(self, mb: int) -> None:
        with torch.autocast(self.device.type, dtype=self.dtype):
            self.fwd(self.batch(mb), self.batch(mb))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def _estimate(shape: dict[str, Any], mb: int, loss: str, comp: bool, dtype: str) -> plan.Estimate:
    w = plan.Workload(**shape, micro_batch=mb, dtype=dtype, compile=comp, loss=loss)
    return plan.estimate(w, plan.Overhead(0, 0))


def measure_memory(
    shape: dict[str, Any], device: torch.device, mb: int, comp: bool, loss: str
) -> dict[str, Any]:
    """Peak allocated/reserved of a train micro-step (grads present) and of an eval step."""
    if device.type == "cpu":
        w = plan.Workload(**shape, micro_batch=mb, compile=comp, loss=loss)
        train, evals = trace_peaks(w)
        return {"train": train, "train_res": None, "eval": evals, "eval_res": None}
    run = Run(shape, device, loss, comp)
    try:
        run.step(mb, 1)  # compiles, creates the AdamW states
        run.sync()
        torch.cuda.reset_peak_memory_stats(device)
        run.step(mb, 2)  # the second micro-step runs with the first one's gradients
        run.sync()
        out = {
            "train": torch.cuda.max_memory_allocated(device),
            "train_res": torch.cuda.max_memory_reserved(device),
        }
        torch.cuda.reset_peak_memory_stats(device)
        run.eval(mb)
        run.sync()
        out["eval"] = torch.cuda.max_memory_allocated(device)
        out["eval_res"] = torch.cuda.max_memory_reserved(device)
        return out
    except torch.cuda.OutOfMemoryError:
        return {"oom": True}
    finally:
        del run
        _free()


def part_a(
    shape: dict[str, Any], device: torch.device, sizes: list[int], compiles: list[bool], loss: str
) -> list[str]:
    dtype = "bfloat16"
    rows = [
        "| micro-batch | compile | train: predicted | allocated | error | reserved | eval: predicted | allocated | error |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for comp in compiles:
        for mb in sizes:
            e = _estimate(shape, mb, loss, comp, dtype)
            m = measure_memory(shape, device, mb, comp, loss)
            if m.get("oom"):
                rows.append(f"| {mb} | {comp} | {_u(e.peak_train)} | OOM | | | | | |")
                continue
            res = _u(m["train_res"]) if m["train_res"] is not None else "n/a"
            rows.append(
                f"| {mb} | {'on' if comp else 'off'} | {_u(e.peak_train)} | "
                f"{_u(m['train'])} | {100 * (e.peak_train / m['train'] - 1):+.1f}% | {res} | "
                f"{_u(e.peak_eval)} | {_u(m['eval'])} | "
                f"{100 * (e.peak_eval / m['eval'] - 1):+.1f}% |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def speed(run: Run, mb: int, steps: int) -> float:
    """Tokens/s over `steps` optimizer steps of SEQUENCES sequences, then one eval step."""
    accum = SEQUENCES // mb
    run.step(mb, accum)  # warm-up (compilation)
    run.eval(mb)  # the story's OOM came here, after training had filled the allocator
    run.sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        run.step(mb, accum)
    run.sync()
    return SEQUENCES * run.block * steps / (time.perf_counter() - t0)


def part_b(
    shape: dict[str, Any], device: torch.device, card_gib: float, steps: int, comp: bool
) -> list[str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda":
        torch.cuda.init()
        free, total = torch.cuda.mem_get_info(device)
        context = total - free - torch.cuda.memory_reserved(device)
        cap = card_gib * 2**30 - plan.DRIVER_RESERVE - context  # what a card_gib card leaves torch
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
    n = (
        sum(p.numel() for p in GPT(GPTConfig(**shape)).parameters())
        - shape["block_size"] * shape["n_embd"]
    )
    fpt = hardware.flops_per_token(n, shape["n_layer"], shape["n_embd"], shape["block_size"])
    peak = hardware.peak_tflops(name, "bfloat16")
    rows = [
        "| loss | micro-batch | grad_accum | planner says | result | tokens/s | vs micro-batch 4 | MFU |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    budget = int(card_gib * 2**30)
    overhead = plan.Overhead.for_card(comp, nominal=True)
    base: float | None = None
    for loss, sizes in (("plain", [4, 8]), ("lean", [4, 8, 16, 32]), ("fused", [4, 8, 16, 32])):
        for mb in sizes:
            fits = plan.estimate(
                plan.Workload(**shape, micro_batch=mb, compile=comp, loss=loss), overhead
            ).fits(budget)
            run: Run | None = None
            try:
                run = Run(shape, device, loss, comp)
                tps: float | None = speed(run, mb, steps)
            except torch.cuda.OutOfMemoryError:
                tps = None
            finally:
                del run
                _free()
            if mb == 4:  # each loss against itself at micro-batch 4
                base = tps
            ratio = f"{tps / base:.2f}x" if tps and base else ""
            mfu = f"{100 * hardware.mfu(tps, fpt, peak):.1f}%" if tps and peak else "n/a"
            result = f"{tps:,.0f}" if tps else ""
            rows.append(
                f"| {loss} | {mb} | {SEQUENCES // mb} | {'fits' if fits else 'does not fit'} | "
                f"{'ran' if tps else 'OOM'} | {result} | {ratio} | {mfu} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (a dry run)")
    ap.add_argument("--parts", default="a,b", help="a, b or a,b")
    ap.add_argument("--micro-batches", default="1,2,4,8,16")
    ap.add_argument("--compile", default="off,on", help="off, on or off,on")
    ap.add_argument("--card-gib", type=float, default=12.0, help="part B: the card to emulate")
    ap.add_argument("--steps", type=int, default=5, help="part B: timed optimizer steps")
    ap.add_argument("--loss", default="fused", choices=("fused", "lean", "plain"), help="part A")
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA GPU: run on a GPU, or pass --tiny for a CPU dry run", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.tiny else torch.device("cuda")
    enable_fast_math(device)
    shape = TINY if args.tiny else GPT2
    if args.tiny:
        UNIT.update(name="MiB", bytes=2**20)
    sizes = [int(v) for v in args.micro_batches.split(",")]
    compiles = [c == "on" for c in args.compile.split(",")]
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (tiny dry run)"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## GPU memory: planner vs allocator, {'tiny' if args.tiny else 'GPT-2 124M'} on {dev}",
        "",
        f"{now}, torch {torch.__version__}, bf16 autocast, {args.loss} loss in part A; "
        f"`bench/memory_gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
    ]
    if "a" in args.parts:
        lines += [
            f"### A. Predicted vs measured peak ({UNIT['name']})",
            "",
            *part_a(shape, device, sizes, compiles, args.loss),
            "",
        ]
    if "b" in args.parts:
        comp = compiles[-1] and device.type == "cuda"
        lines += [
            f"### B. The story: a {args.card_gib:g} GiB card, {SEQUENCES} sequences per step, "
            f"compile {'on' if comp else 'off'}",
            "",
            *part_b(shape, device, args.card_gib, args.steps, comp),
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_text(Path(args.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
