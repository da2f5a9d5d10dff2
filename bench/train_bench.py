"""`make bench-train`: time to a val loss on configs/demo.yaml, on this CPU.

A user pays for the time to a model of a given quality, not for ms/step. In
one run this trains configs/demo.yaml's model from the same initial weights on
the same shuffled windows of data/shards/demo (`make bench-train` builds it
when missing) with six loops, and measures for each the training time until
its val loss reaches the loss that the plain loop has after the config's
`max_iters` (200) steps:

  plain loop   nanoGPT-style: full (B*T, V) logits and F.cross_entropy, torch
               AdamW with nanoGPT's decay groups, the same warmup + cosine
               schedule, clipping. Written here, not with the trainer.
  codegpt      `Trainer.train_step` (the loss guard, clipping, the schedule) with
               each loss: fused (the default), lean and plain; AdamW.
  codegpt Muon `optimizer=muon` (torch.optim.Muon for the blocks' matrices, AdamW
               for the rest), fused loss; and the same with
               `activation_checkpointing=full` (the same math: the recompute's cost).

The six step in turn (step k of each, then step k + 1 of each), so that other
load on the machine falls on all of them alike; each step is timed on its own.
Every `--eval-every` steps each model's loss is measured on the same fixed val
windows (model/loader.py's EvalSet: `eval_iters` x `micro_batch` windows spread
over the val split), with the same full-logits forward for all; eval time is not
training time. The time to the target is interpolated linearly between the two
evals around the first crossing. Peak memory: each loop again in its own
process for a few steps, its peak RSS (VmHWM) and what the steps add to
the RSS it had once built.

    .venv/bin/python bench/train_bench.py [--steps 200] [--eval-every 10] [--out docs/benchmarks/train.md]
    .venv/bin/python bench/train_bench.py --tiny     # a tiny model on random tokens: a dry run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.atomic import write_text  # noqa: E402
from model.config import load  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from model.loader import make_loaders  # noqa: E402
from model.schedule import lr_at  # noqa: E402
from model.shards import list_shards, write_shard  # noqa: E402
from model.train_config import TrainConfig  # noqa: E402
from model.trainer import Trainer  # noqa: E402
from pipeline.tokenize import manifest  # noqa: E402

CONFIG = REPO / "configs" / "demo.yaml"
TINY = ["n_layer=2", "n_head=2", "n_embd=32", "block_size=64", "vocab_size=512", "eval_iters=2"]

# key, what it is, the trainer's overrides (None: the plain loop)
LOOPS: list[tuple[str, str, list[str] | None]] = [
    ("plain", "plain loop (nanoGPT-style: full logits, F.cross_entropy, AdamW)", None),
    ("fused", "codegpt, fused loss, AdamW", ["loss=fused", "optimizer=adamw"]),
    ("lean", "codegpt, lean loss, AdamW", ["loss=lean", "optimizer=adamw"]),
    ("plain-loss", "codegpt, plain loss, AdamW", ["loss=plain", "optimizer=adamw"]),
    ("muon", "codegpt, fused loss, Muon (the default)", ["loss=fused", "optimizer=muon"]),
    (
        "muon-ac",
        "codegpt, fused loss, Muon, activation checkpointing",
        ["loss=fused", "optimizer=muon", "activation_checkpointing=full"],
    ),
]


def shard_folder(cfg: TrainConfig, tmp: Path, tiny: bool) -> tuple[Path, str]:
    data = REPO / cfg.data
    if not tiny and data.is_dir() and list_shards(data, "train") and list_shards(data, "val"):
        return data, f"{cfg.data} (`make tokenize CONFIG=configs/demo.yaml`)"
    if not tiny:
        raise SystemExit(
            f"bench: no shards in {data}: run `make bench-train` (it builds them), or "
            "`make tokenize CONFIG=configs/demo.yaml RUN=local` first; --tiny for a dry run"
        )
    # a random 2,000-token motif repeated: something a tiny model can learn in a few steps
    motif = np.random.default_rng(0).integers(0, cfg.vocab_size, 2000, dtype=np.uint16)
    for split, reps in (("train", 50), ("val", 10)):
        write_shard(tmp, split, 0, np.tile(motif, reps))
    manifest.write_for_shards(tmp, {"name": "random", "n_vocab": cfg.vocab_size})
    return tmp, "a repeated random motif (--tiny)"


# ---------------------------------------------------------------- the loops


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on a GPU (as nanoGPT and the trainer's dtype auto), none on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class NanoForward(torch.nn.Module):
    """nanoGPT's `model(X, Y)`: the full logits and their cross-entropy in one forward, so
    that torch.compile sees (and fuses) the loss too, as it does in nanoGPT."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model(x)  # (B, T, V): all of them
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)


class PlainLoop:
    """nanoGPT's train.py reduced to a step: full logits and F.cross_entropy inside the
    forward; on a GPU its bf16 autocast, fused AdamW and torch.compile (when the config
    compiles), and no synchronization in the step (nanoGPT waits for the GPU only when
    it logs a loss; here the timing harness waits at the end of each timed stretch)."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        torch.manual_seed(cfg.seed)  # the trainer's initial weights (seed_everything)
        self.cfg, self.device = cfg, device
        self.model = GPT(GPTConfig.from_train(cfg)).to(device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        cuda = device.type == "cuda"
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=cuda)
        nano = NanoForward(self.model)
        self.forward: Any = torch.compile(nano) if cuda and cfg.compile else nano
        self.loader, self.val = make_loaders(cfg, 0, 1, device)  # the trainer's windows

    def step(self, k: int) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr_at(k, self.cfg)
        for _ in range(self.cfg.grad_accum):
            x, y = self.loader.next_batch()
            with _autocast(self.device):
                loss = self.forward(x, y)
            (loss / self.cfg.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class TrainerLoop:
    """The project's trainer, one `train_step` at the schedule's learning rate."""

    def __init__(self, cfg: TrainConfig, run: Path, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.trainer = Trainer(cfg, device, run)
        self.model = self.trainer.raw_model
        self.val = self.trainer.val_set

    def step(self, k: int) -> None:
        self.trainer.train_step(lr_at(k, self.cfg))


Loop = PlainLoop | TrainerLoop


def build(
    key: str,
    data: Path,
    run: Path,
    extra: list[str],
    config: Path = CONFIG,
    device: torch.device | None = None,
) -> Loop:
    """Loop `key` of LOOPS on `config` (plus `extra`), its run folder under `run`."""
    device = device or torch.device("cpu")
    over = {k: o for k, _, o in LOOPS}[key]
    values = [f"data={data}", f"out_dir={run / key}", f"device={device.type}", *extra]
    cfg = load(TrainConfig, config, [*values, *(over or [])])
    return PlainLoop(cfg, device) if over is None else TrainerLoop(cfg, run / key, device)


@torch.no_grad()
def val_loss(loop: Loop) -> float:
    """Mean cross-entropy over the fixed val windows, the same forward for every loop."""
    model, val = loop.model, loop.val
    model.eval()
    total = 0.0
    for i in range(val.iters):
        x, y = val.batch(i)
        with _autocast(loop.device):
            logits, _ = model(x)
            total += float(F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1)))
    model.train()
    return total / val.iters


@dataclass
class Curve:
    ms: list[float] = field(default_factory=list)  # per step
    evals: list[tuple[int, float]] = field(default_factory=list)  # (steps done, val loss)

    def loss_at(self, steps: int) -> float:
        return next(loss for s, loss in self.evals if s == steps)

    def seconds_at(self, steps: float) -> float:
        """Training seconds after `steps` steps (fractional: linear within a step)."""
        whole = int(steps)
        done = sum(self.ms[:whole])
        if whole < len(self.ms):
            done += (steps - whole) * self.ms[whole]
        return done / 1000

    def reaches(self, target: float) -> float | None:
        """Steps to the first val loss <= target after step 0, linear between the evals
        around it (an initial loss already at the target does not count)."""
        prev: tuple[int, float] | None = None
        for step, loss in self.evals:
            if loss <= target and step > 0:
                if prev is None or prev[1] == loss:
                    return float(step)
                s0, l0 = prev
                return s0 + (l0 - target) / (l0 - loss) * (step - s0)
            prev = (step, loss)
        return None


def race(loops: dict[str, Loop], steps: int, every: int) -> dict[str, Curve]:
    """Every loop `steps` steps, in turn (step k of each, then k + 1), evals every `every`."""
    curves = {k: Curve() for k in loops}
    for k, loop in loops.items():
        curves[k].evals.append((0, val_loss(loop)))
    for step in range(steps):
        for k, loop in loops.items():
            t0 = time.perf_counter()
            loop.step(step)
            curves[k].ms.append(1000 * (time.perf_counter() - t0))
        done = step + 1
        if done % every == 0 or done == steps:
            for k, loop in loops.items():
                curves[k].evals.append((done, val_loss(loop)))
            line = ", ".join(f"{k} {c.evals[-1][1]:.3f}" for k, c in curves.items())
            print(f"bench: step {done}/{steps}: val {line}", file=sys.stderr, flush=True)
    return curves


def extend(
    loops: dict[str, Loop], curves: dict[str, Curve], target: float, cap: int, every: int
) -> None:
    """The loops that have not reached `target` go on (in turn, at the schedule's min_lr)
    until they do or reach step `cap`: equal math does not mean an equal trajectory,
    and a loop that ends 0.01 above the target is slower by some steps, not infinitely."""
    pending = [k for k in loops if curves[k].reaches(target) is None]
    step = len(next(iter(curves.values())).ms)
    while pending and step < cap:
        for k in pending:
            t0 = time.perf_counter()
            loops[k].step(step)
            curves[k].ms.append(1000 * (time.perf_counter() - t0))
        step += 1
        if step % every == 0 or step == cap:
            for k in pending:
                curves[k].evals.append((step, val_loss(loops[k])))
            print(
                f"bench: step {step} (past the end, to the target {target:.4f}): "
                + ", ".join(f"{k} {curves[k].evals[-1][1]:.3f}" for k in pending),
                file=sys.stderr,
                flush=True,
            )
            pending = [k for k in pending if curves[k].reaches(target) is None]


def run_alone(
    loop: Loop,
    steps: int,
    every: int,
    target: float | None = None,
    cap: int = 0,
    *,
    warmup: int = 0,
    sync: Callable[[], None] = lambda: None,
    around_eval: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Curve:
    """One loop's curve on its own (a GPU's timing does not need the turns); short of
    `target` at `steps`, it goes on to `cap` steps at most, as `extend`.

    On a GPU a step returns once its work is queued, so `sync` (the device's
    synchronize) is called after each of the first `warmup` steps (they compile:
    timed one by one) and at the end of every stretch between evals, whose wait is
    added to the stretch's last step: the sum of each stretch is exact, whatever a
    loop synchronizes itself. Each eval runs inside `around_eval()`.
    """
    with around_eval():
        curve = Curve(evals=[(0, val_loss(loop))])
    step = 0
    while step < steps or (target is not None and step < cap and curve.reaches(target) is None):
        t0 = time.perf_counter()
        loop.step(step)
        if step < warmup:
            sync()
        curve.ms.append(1000 * (time.perf_counter() - t0))
        step += 1
        if step % every == 0 or step == steps:
            t0 = time.perf_counter()
            sync()
            curve.ms[-1] += 1000 * (time.perf_counter() - t0)
            with around_eval():
                curve.evals.append((step, val_loss(loop)))
    if step % every and step != steps:  # ended past `steps` between two evals (at `cap`)
        t0 = time.perf_counter()
        sync()
        curve.ms[-1] += 1000 * (time.perf_counter() - t0)
    return curve


# ---------------------------------------------------------------- memory, in a child


def child_memory(key: str, argv: list[str]) -> int:
    """Build one loop, note its RSS, run a few steps: print the peak and the increase."""
    args = parse(argv)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        _, data, _, extra = setup(args, tmp)
        loop = build(key, data, tmp / "run", extra)
        built = psutil.Process().memory_info().rss
        for k in range(args.memory_steps):
            loop.step(k)
        peak = _hwm()
    print(json.dumps({"peak": peak, "steps_add": max(0, peak - built), "built": built}))
    return 0


def _hwm() -> int:
    """This process's peak RSS (VmHWM), bytes. Not ru_maxrss: Linux carries that over
    from the parent across fork and exec, so a child of the 1.6 GB race reported 1.6 GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_of(key: str, argv: list[str]) -> dict[str, int]:
    cmd = [sys.executable, __file__, *argv, "--child-memory", key]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench: the memory run of {key} failed:\n{done.stderr[-2000:]}")
    out: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=0, help="steps per loop; 0 = max_iters")
    ap.add_argument("--eval-every", type=int, default=10, help="steps between val evals")
    ap.add_argument(
        "--cap", type=float, default=1.5, help="a loop short of the target goes on to cap x steps"
    )
    ap.add_argument("--memory-steps", type=int, default=3, help="steps of each memory run")
    ap.add_argument("--tiny", action="store_true", help="a tiny model on random tokens")
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "train.md"))
    ap.add_argument("--child-memory", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def setup(args: argparse.Namespace, tmp: Path) -> tuple[TrainConfig, Path, str, list[str]]:
    """The demo config (tiny: shrunk), its shard folder and a description of it."""
    # fim_rate 0: every loop races on the same left-to-right windows (the FIM loader's
    # cost is bench/loader_bench.py's to measure)
    extra = ["fim_rate=0", *(TINY if args.tiny else [])]
    base = load(TrainConfig, CONFIG, [f"out_dir={tmp / 'run'}", "device=cpu", *extra])
    data, desc = shard_folder(base, tmp / "shards", args.tiny)
    return base, data, desc, extra


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.child_memory:
        rest = [a for a in argv if a != args.child_memory and a != "--child-memory"]
        return child_memory(args.child_memory, rest)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        base, data, data_desc, extra = setup(args, tmp)
        steps = args.steps or base.max_iters
        loops = {k: build(k, data, tmp / "run", extra) for k, _, _ in LOOPS}
        curves = race(loops, steps, args.eval_every)  # no warm-up step: it would train
        target = curves["plain"].evals[-1][1]
        extend(loops, curves, target, int(args.cap * steps), args.eval_every)
    passthrough = ["--memory-steps", str(args.memory_steps)] + (["--tiny"] if args.tiny else [])
    memory = {k: memory_of(k, passthrough) for k, _, _ in LOOPS}
    report = render(base, data_desc, steps, curves, memory, args)
    print(report)
    write_text(Path(args.out), report)
    return 0


def render(
    cfg: TrainConfig,
    data: str,
    steps: int,
    curves: dict[str, Curve],
    memory: dict[str, dict[str, int]],
    args: argparse.Namespace,
) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    target = curves["plain"].evals[-1][1]
    base_steps = curves["plain"].reaches(target)
    assert base_steps is not None  # its own last eval reaches it
    base_s = curves["plain"].seconds_at(base_steps)
    assert base_s > 0
    tok = cfg.tokens_per_step
    rows = []
    ratios: dict[str, float | None] = {}
    for key, name, _ in LOOPS:
        c = curves[key]
        ms = statistics.median(c.ms)
        hit = c.reaches(target)
        secs = c.seconds_at(hit) if hit is not None else None
        ratios[key] = secs / base_s if secs is not None else None
        reached = f"{hit:.0f}" if hit is not None else f"not in {len(c.ms)}"
        wall = f"{secs:.1f}" if secs is not None else "-"
        ratio = f"{ratios[key]:.2f}x" if ratios[key] is not None else "-"
        m = memory[key]
        rows.append(
            f"| {name} | {ms:.0f} | {tok * 1000 / ms:,.0f} | {c.loss_at(steps):.4f} | {reached} | "
            f"{wall} | {ratio} | {m['peak'] / 2**20:,.0f} MiB (+{m['steps_add'] / 2**20:,.0f}) |"
        )
    speed = statistics.median(curves["plain"].ms) / statistics.median(curves["fused"].ms)
    lean_mem, fused_mem = memory["lean"]["steps_add"], memory["fused"]["steps_add"]
    fused_ratio = ratios["fused"]
    muon_ratio = ratios["muon"]
    recompute = statistics.median(curves["muon-ac"].ms) / statistics.median(curves["muon"].ms)
    ac_mem, muon_mem = memory["muon-ac"]["steps_add"], memory["muon"]["steps_add"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    shape = (
        f"n_layer {cfg.n_layer}, n_head {cfg.n_head}, n_embd {cfg.n_embd}, "
        f"block {cfg.block_size}, vocab {cfg.vocab_size}"
    )
    lines = [
        "# Time to a val loss on the CPU (configs/demo.yaml)",
        "",
        f"- date: {now}",
        f"- machine: {machine}, {platform.system()} {platform.release()}, torch {torch.__version__}",
        f"- command: `.venv/bin/python bench/train_bench.py{' --tiny' if args.tiny else ''}"
        f" --steps {steps} --eval-every {args.eval_every}` (`make bench-train`)",
        f"- model: {shape}; micro_batch {cfg.micro_batch} x grad_accum {cfg.grad_accum} = "
        f"{tok:,} tokens per step, fp32, lr {cfg.lr} warmup {cfg.warmup_iters} cosine to "
        f"{cfg.min_lr} at {cfg.max_iters}",
        f"- data: {data}; val: {cfg.eval_iters} x {cfg.micro_batch} fixed windows, every "
        f"{args.eval_every} steps",
        f"- target: the plain loop's val loss after {steps} steps, {target:.4f}; a loop short of "
        f"it at step {steps} goes on at min_lr, to {int(args.cap * steps)} steps at most",
        "",
        f"| loop | ms/step (median) | tokens/s | val loss at step {steps} | steps to the target | "
        "training seconds to it | vs the plain loop | peak RSS (what the steps add) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "| target | measured | goal | |",
        "| --- | --- | --- | --- |",
        f"| codegpt's step (fused loss, AdamW) against the plain loop, tokens/s | "
        f"{speed:.2f}x | >= 1.0x | {verdict(speed >= 1.0)} |",
        f"| ... memory its steps add, against the lean loss's | "
        f"{fused_mem / 2**20:,.0f} vs {lean_mem / 2**20:,.0f} MiB | no more | "
        f"{verdict(fused_mem <= lean_mem * 1.05)} |",
        f"| time to the target, codegpt's default (fused loss, Muon) | {_ratio(muon_ratio)} | "
        f"<= 0.8x | {verdict(muon_ratio is not None and muon_ratio <= 0.8)} |",
        f"| time to the target, codegpt with AdamW (fused loss) | {_ratio(fused_ratio)} | "
        f"<= 0.8x | {verdict(fused_ratio is not None and fused_ratio <= 0.8)} |",
        f"| activation checkpointing: the default's step with it / without (the recompute's "
        f"cost), and the memory its steps add | {recompute:.2f}x; {ac_mem / 2**20:,.0f} vs "
        f"{muon_mem / 2**20:,.0f} MiB | about 1.33x at most | "
        f"{verdict(recompute <= 1.4)} |",
        "",
        "ms/step is the median step; training seconds are the sum of the measured steps to the "
        "interpolated crossing (evals excluded). The AdamW loops compute the same updates up to "
        "float rounding (tests/model/test_gpt.py checks the losses' gradients in fp32 and fp64), "
        "but a chaotic trajectory turns rounding into a different curve: on this 20-window val "
        "set equal-math loops end a few hundredths of a nat apart, which costs or saves some "
        "steps near the end. Muon changes the curve itself. Peak RSS is of a process that builds only that loop and runs "
        f"{args.memory_steps} steps (the Python, torch and data it loads included); in "
        "brackets what the steps add to the RSS it had once built.",
    ]
    return "\n".join(lines) + "\n"


def _ratio(r: float | None) -> str:
    return f"{r:.2f}x" if r is not None else "not reached"


if __name__ == "__main__":
    raise SystemExit(main())
