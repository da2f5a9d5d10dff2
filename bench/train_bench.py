"""`make bench-train`: training speed of configs/demo.yaml on this CPU.

Measures the project's trainer (`Trainer.train_step`: the config's loss, fused
by default, AdamW with decay groups, clipping, the loss guard) against a baseline
measured in the same run: a nanoGPT-style minimal loop on the same model,
plain fp32 eager, full (B*T, V) logits and `F.cross_entropy`, AdamW and
clipping. The two alternate in rounds so that other load on the machine
hits both alike; the median step of each is reported.

    .venv/bin/python bench/train_bench.py [--steps 8] [--rounds 3] [--out docs/benchmarks/train.md]
    .venv/bin/python bench/train_bench.py --loss lean      # the trainer with another loss

Data: data/shards/demo if it exists (`make tokenize` with the demo config),
else random tokens in a temporary folder (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.atomic import write_text  # noqa: E402
from model.config import load  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from model.loader import TrainLoader, Windows, open_dataset  # noqa: E402
from model.shards import list_shards, write_shard  # noqa: E402
from model.train_config import TrainConfig  # noqa: E402
from model.trainer import Trainer  # noqa: E402
from pipeline.tokenize import manifest  # noqa: E402

CONFIG = REPO / "configs" / "demo.yaml"


def shard_folder(cfg: TrainConfig, tmp: Path) -> tuple[Path, str]:
    data = REPO / cfg.data
    if data.is_dir() and list_shards(data, "train") and list_shards(data, "val"):
        return data, str(cfg.data)
    rng = np.random.default_rng(0)
    for split, n in (("train", 400_000), ("val", 50_000)):
        write_shard(tmp, split, 0, rng.integers(0, 50257, n, dtype=np.uint16))
    manifest.write_for_shards(tmp, {"name": "random", "n_vocab": 50257})
    return tmp, "random tokens (no data/shards/demo)"


def baseline_step_fn(cfg: TrainConfig, data: Path) -> Callable[[], float]:
    """nanoGPT-style: full logits, F.cross_entropy, fp32, eager."""
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig.from_train(cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    assert isinstance(cfg.micro_batch, int)
    windows = Windows(
        open_dataset(data, cfg.vocab_size).shards["train"], "train", cfg.block_size, cfg.vocab_size
    )
    loader = TrainLoader(windows, cfg.micro_batch, shuffle=cfg.shuffle, seed=cfg.seed)

    def step() -> float:
        for _ in range(cfg.grad_accum):
            x, y = loader.next_batch()
            logits, _ = model(x)  # (B, T, V): all of them
            assert logits is not None
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1)) / cfg.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.item())

    return step


def timed(fn: Callable[[], object], steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t0))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per round and loop")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--loss", default="", help="the trainer's loss (fused, lean, plain); default: the config's"
    )
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "train.md"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        cfg = load(TrainConfig, CONFIG, [f"out_dir={tmp / 'run'}", "device=cpu"])
        data, data_desc = shard_folder(cfg, tmp / "shards")
        over = [f"out_dir={tmp / 'run'}", "device=cpu", f"data={data}"]
        cfg = load(TrainConfig, CONFIG, over + ([f"loss={args.loss}"] if args.loss else []))
        trainer = Trainer(cfg, torch.device("cpu"), tmp / "run")
        ours: Callable[[], object] = lambda: trainer.train_step(cfg.lr)  # noqa: E731
        base = baseline_step_fn(cfg, data)
        ours(), base()  # warm-up: allocator, first-call overheads
        t_ours: list[float] = []
        t_base: list[float] = []
        for _ in range(args.rounds):
            t_ours += timed(ours, args.steps)
            t_base += timed(base, args.steps)
    ms_o, ms_b = statistics.median(t_ours), statistics.median(t_base)
    tok = cfg.tokens_per_step
    report = render(cfg, data_desc, ms_o, ms_b, tok, args)
    print(report)
    write_text(Path(args.out), report)
    return 0


def render(
    cfg: TrainConfig, data: str, ms_o: float, ms_b: float, tok: int, args: argparse.Namespace
) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"""# Training speed on the CPU (configs/demo.yaml)

- date: {now}
- machine: {machine}, {platform.system()} {platform.release()}, torch {torch.__version__}
- command: `.venv/bin/python bench/train_bench.py --steps {args.steps} --rounds {args.rounds}{" --loss " + args.loss if args.loss else ""}`
- model: n_layer {cfg.n_layer}, n_head {cfg.n_head}, n_embd {cfg.n_embd}, block {cfg.block_size}, vocab {cfg.vocab_size}; micro_batch {cfg.micro_batch} x grad_accum {cfg.grad_accum} = {tok:,} tokens per step, fp32
- data: {data}
- median of {args.rounds} x {args.steps} steps per loop, the two loops alternating

| loop | ms/step | tokens/s |
| --- | ---: | ---: |
| codegpt trainer (`Trainer.train_step`, {cfg.loss} loss) | {ms_o:.1f} | {tok * 1000 / ms_o:,.0f} |
| baseline: nanoGPT-style loop, full logits + F.cross_entropy | {ms_b:.1f} | {tok * 1000 / ms_b:,.0f} |
| ratio (trainer / baseline tokens/s) | | {ms_b / ms_o:.2f}x |

The output head (50304 x {cfg.n_embd}) is most of the work at this size. The
fused loss makes the head's gradients in its forward pass, a chunk of
positions at a time, so it never holds all the logits and does the same three
head matmuls as the full-logits loop; the lean loss (`--loss lean`) recomputes
the logits in backward instead, a fourth matmul (docs/model.md).
"""


if __name__ == "__main__":
    raise SystemExit(main())
