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

    python3 bench/memory_gpu.py --out "$OUT/memory.md"        # on a GPU: both tables
    python3 bench/memory_gpu.py --tiny                         # on the CPU: a dry run of the code
    python3 bench/memory_gpu.py --parts a --compile on --micro-batches 4,8,16
    python3 bench/memory_gpu.py --parts a --loss lean          # part A for another loss

On a lent GPU machine this runs inside bench/gpu_session.sh, which says what
to carry there; only what is written under $OUT comes back from it.
Time on an H200 (estimated, not yet measured): part A compile off ~30 s;
compile on ~30 s a micro-batch size (one static compile each; the model is
built once per setting and reused over the sizes, in ascending order); part B
(compile off) ~1 min.

On the CPU (--tiny) there is no allocator to read: the "measured" columns are
the fake-tensor trace (model.memtrace.trace_peaks) and part B has no memory cap.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
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
        # the trainer's `dtype: auto` rule (native bf16 only: a T4 or V100 runs fp16)
        cap = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        name = hardware.auto_dtype(device.type, cap) if device.type == "cuda" else "bfloat16"
        self.dtype = torch.bfloat16 if name == "bfloat16" else torch.float16
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


def free_memory() -> None:
    """Between settings: drop the compiled graphs first (they hold the model and its
    buffers), then collect, then hand the cached blocks back to the driver."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def allow_recompiles(n: int = 64) -> None:
    """One compiled model serves every micro-batch size (a static graph each); dynamo's
    default limit of 8 graphs a function would silently run the rest eagerly."""
    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, then the older
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(n, getattr(torch._dynamo.config, name)))


def bench_device(tiny: bool) -> torch.device | None:
    """The CPU for --tiny, else this GPU (fast math on, recompiles allowed); None, said
    on stderr, when there is no GPU."""
    if not tiny and not torch.cuda.is_available():
        print("no CUDA GPU: run on a GPU, or pass --tiny for a CPU dry run", file=sys.stderr)
        return None
    device = torch.device("cpu") if tiny else torch.device("cuda", torch.cuda.current_device())
    enable_fast_math(device)
    allow_recompiles()
    return device


def _estimate(shape: dict[str, Any], mb: int, loss: str, comp: bool, dtype: str) -> plan.Estimate:
    w = plan.Workload(**shape, micro_batch=mb, dtype=dtype, compile=comp, loss=loss)
    return plan.estimate(w, plan.Overhead(0, 0))


def measure_memory(
    run: Run | None, shape: dict[str, Any], mb: int, comp: bool, loss: str
) -> dict[str, Any]:
    """Peak allocated/reserved of a train micro-step (grads present) and of an eval step.

    `run` is reused over the sizes of one setting (its AdamW states exist after the
    first size); the peaks are reset before each measured step, so they are this size's.
    """
    if run is None:  # the CPU: no allocator to read
        w = plan.Workload(**shape, micro_batch=mb, compile=comp, loss=loss)
        train, evals = trace_peaks(w)
        return {"train": train, "train_res": None, "eval": evals, "eval_res": None}
    device = run.device
    try:
        run.step(mb, 1)  # compiles this shape, creates the AdamW states on the first size
        run.sync()
        torch.cuda.empty_cache()  # the last size's cached blocks: reserved is this size's
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
        run.opt.zero_grad(set_to_none=True)
        return {"oom": True}


def part_a(
    shape: dict[str, Any],
    device: torch.device,
    sizes: list[int],
    compiles: list[bool],
    loss: str,
    figures: list[dict[str, Any]],
) -> list[str]:
    dtype = "bfloat16"
    rows = [
        "| micro-batch | compile | train: predicted | allocated | error | reserved | eval: predicted | allocated | error |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for comp in compiles:
        run = Run(shape, device, loss, comp) if device.type == "cuda" else None
        try:
            for mb in sorted(sizes):  # ascending: a size that runs out ends the setting
                e = _estimate(shape, mb, loss, comp, dtype)
                m = measure_memory(run, shape, mb, comp, loss)
                if m.get("oom"):
                    rows.append(
                        f"| {mb} | {'on' if comp else 'off'} | {_u(e.peak_train)} | OOM | | | | | |"
                    )
                    break
                res = _u(m["train_res"]) if m["train_res"] is not None else "n/a"
                train_err = e.peak_train / m["train"] - 1
                eval_err = e.peak_eval / m["eval"] - 1
                figures.append(
                    {
                        "micro_batch": mb,
                        "compile": comp,
                        "loss": loss,
                        "train_error": train_err,
                        "eval_error": eval_err,
                        "train_measured": m["train"],
                        "train_predicted": e.peak_train,
                    }
                )
                rows.append(
                    f"| {mb} | {'on' if comp else 'off'} | {_u(e.peak_train)} | "
                    f"{_u(m['train'])} | {100 * train_err:+.1f}% | {res} | "
                    f"{_u(e.peak_eval)} | {_u(m['eval'])} | {100 * eval_err:+.1f}% |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
        finally:
            del run
            free_memory()
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


def cap_memory(device: torch.device, card_gib: float) -> None:
    """Hold the caching allocator to what a `card_gib` card leaves PyTorch."""
    torch.cuda.init()
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    context = total - free - torch.cuda.memory_reserved(index)
    cap = card_gib * 2**30 - plan.DRIVER_RESERVE - context
    # an indexed device: torch.device("cuda") is refused ("Expected a torch.device with a
    # specified index"), which once cost a whole part B
    torch.cuda.set_per_process_memory_fraction(float(min(1.0, cap / total)), index)


def part_b(
    shape: dict[str, Any], device: torch.device, card_gib: float, steps: int, comp: bool
) -> list[str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda":
        cap_memory(device, card_gib)
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
    for loss, sizes in (("plain", [4, 8]), ("lean", [4, 8, 16, 32]), ("fused", [4, 8, 16, 32])):
        base: float | None = None
        run: Run | None = None
        out_of_memory = False
        try:
            run = Run(shape, device, loss, comp)  # one model per loss, over its sizes
            for mb in sizes:
                fits = plan.estimate(
                    plan.Workload(**shape, micro_batch=mb, compile=comp, loss=loss), overhead
                ).fits(budget)
                tps: float | None = None
                if not out_of_memory:  # a size above one that ran out runs out too
                    try:
                        tps = speed(run, mb, steps)
                    except torch.cuda.OutOfMemoryError:
                        out_of_memory = True
                        run.opt.zero_grad(set_to_none=True)
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
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
        except torch.cuda.OutOfMemoryError:  # the model and AdamW alone do not fit
            rows.append(f"| {loss} | | | | OOM building the model | | | |")
        finally:
            del run
            free_memory()
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
    ap.add_argument("--json", help="also write part A's figures here (bench/gpu_summary.py)")
    args = ap.parse_args(argv)
    device = bench_device(args.tiny)
    if device is None:
        return 2
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
    figures: list[dict[str, Any]] = []
    if "a" in args.parts:
        lines += [
            f"### A. Predicted vs measured peak ({UNIT['name']})",
            "",
            *part_a(shape, device, sizes, compiles, args.loss, figures),
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
    if args.json:
        write_text(Path(args.json), json.dumps({"device": dev, "part_a": figures}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
