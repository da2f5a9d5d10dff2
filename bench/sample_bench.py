"""`make bench-sample`: sampling speed with and without the KV cache, demo model, CPU.

Generates `--tokens` (500) new tokens after a short prompt with the demo
model's shape (configs/demo.yaml: 4 layers, 4 heads, width 128, context 512),
greedily, so every variant's tokens can be compared. When prompt + new tokens
overflow the context (with `--tokens` above ~500, or a shorter-context
config), each variant crops in its own way:

- cache: model/generate.py as `make sample` runs it. When the context is
  full it is cropped to its last `keep` = block_size / 2 tokens and the cache is rebuilt
  from them in one forward; then one position per token again.
- no cache, same window: the same crop policy, but the whole (cropped)
  context through the model for every token. Same tokens as the cached run
  (checked here), so this ratio is like for like: it isolates the cache.
- no cache, nanoGPT window: the last block_size tokens through the model for every
  token, as nanoGPT's sample.py does, with the same decoding head as the
  cached run (model.generate.Head, last position only). It sees a longer
  context on average.
- nanoGPT as written: the same window with the model's own nn.Linear head on
  the last position and an argmax, in a plain loop: what nanoGPT's sample.py
  costs on this model.

The variants alternate in rounds so that other load hits all alike; the
median of the rounds is reported. Weights: out/demo's newest checkpoint if
there is one, else a random init of the same shape (speed does not depend
on the weights).

    .venv/bin/python bench/sample_bench.py [--tokens 500] [--rounds 3] [--out docs/benchmarks/sample.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model import tokenizer as _tokenizer  # noqa: E402
from model.atomic import write_text  # noqa: E402
from model.checkpoint import list_checkpoints, load_for_inference  # noqa: E402
from model.config import load  # noqa: E402
from model.generate import Head, Sampling, generate, next_token  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from model.train_config import TrainConfig  # noqa: E402

VOCAB_SIZE = _tokenizer.get().n_vocab  # GPT-2's (the fixtures' tokenizer)
encode = _tokenizer.get().encode  # GPT-2's (the fixtures' tokenizer)

PROMPT = "import os\nimport sys\n\n\ndef main(argv):\n"
GREEDY = Sampling(temperature=0.0)


def demo_model(config: Path) -> tuple[GPT, str]:
    cfg = load(TrainConfig, config)
    run = REPO / cfg.out_dir
    if list_checkpoints(run):
        model, _, step = load_for_inference(run)
        return model, f"{cfg.out_dir} checkpoint, step {step}"
    torch.manual_seed(0)
    return GPT(GPTConfig.from_train(cfg)).eval(), "random init (no out/demo checkpoint)"


def variants(model: GPT, prompt: list[int], n: int) -> dict[str, Callable[[], list[int]]]:
    block = model.cfg.block_size

    def run(**kw: object) -> Callable[[], list[int]]:
        return lambda: list(generate(model, prompt, n, GREEDY, stop_token=None, **kw))  # type: ignore[arg-type]

    def nanogpt() -> list[int]:
        idx = torch.tensor([prompt])
        for _ in range(n):
            h = model.hidden(idx[:, -block:])[:, -1, :]  # (1, C)
            logits = model.lm_head(h)[:, :VOCAB_SIZE]  # (1, V)
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
        return [int(t) for t in idx[0, len(prompt) :]]

    return {
        f"KV cache, crop to {block // 2} and rebuild": run(),
        f"no cache, same window (crop to {block // 2})": run(use_cache=False),
        f"no cache, nanoGPT window (last {block} every token)": run(use_cache=False, keep=block),
        "nanoGPT as written (nn.Linear head)": nanogpt,
    }


def head_ms(model: GPT, n: int = 200) -> float:
    """ms per token of what every variant does once per token whatever the cache:
    the (1, C) x (C, 50257) head (model.generate.Head) and the argmax."""
    head = Head(model)
    h = torch.randn(1, model.cfg.n_embd)
    next_token(head(h), GREEDY)
    t0 = time.perf_counter()
    for _ in range(n):
        next_token(head(h), GREEDY)
    return 1000 * (time.perf_counter() - t0) / n


def measure(fns: dict[str, Callable[[], list[int]]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    outputs: dict[str, list[int]] = {}
    for name, fn in fns.items():  # warm-up: allocator, thread pool, first kernels
        outputs[name] = fn()
    cached, same = list(outputs)[:2]
    assert outputs[cached] == outputs[same], "cache and no cache gave different tokens"
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _rest(secs: dict[str, float], name: str, head: float, n: int) -> float:
    """Speed-up of everything but the head: (variant - head) / (cache - head), per token."""
    cache = 1000 * next(iter(secs.values())) / n - head
    return (1000 * secs[name] / n - head) / cache if cache > 0 else float("nan")


def report(
    secs: dict[str, float],
    head: float,
    n: int,
    weights: str,
    args: argparse.Namespace,
    cfg: GPTConfig,
) -> str:
    names = list(secs)
    shape = (
        f"{cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, context {cfg.block_size}"
    )
    block, keep = cfg.block_size, cfg.block_size // 2
    base = secs[names[0]]
    rows = [
        f"| {k} | {n / s:,.0f} | {1000 * s / n:.2f} | {s / base:.1f}x |" for k, s in secs.items()
    ]
    cmd = "python bench/sample_bench.py " + " ".join(sys.argv[1:])
    return "\n".join(
        [
            "# Sampling speed: KV cache vs re-running the context (CPU, demo model)",
            "",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
            f"- machine: {platform.machine()} {platform.processor() or ''}, "
            f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}",
            f"- command: `{cmd.strip()}`",
            f"- model: {args.config.name} shape ({shape}), {weights}; fp32, batch 1, greedy",
            f"- work: {n} new tokens after a {len(encode(PROMPT))}-token prompt; "
            f"median of {args.rounds} rounds, variants alternating",
            "",
            "| variant | tokens/s | ms/token | time vs cache |",
            "| --- | ---: | ---: | ---: |",
            *rows,
            "",
            f"Cache speed-up, like for like (same window, same tokens): "
            f"**{secs[names[1]] / base:.1f}x**; against nanoGPT's sliding window: "
            f"**{secs[names[2]] / base:.1f}x**; against nanoGPT's sample.py as written: "
            f"**{secs[names[3]] / base:.1f}x** (target >= 5x).",
            "",
            f"Where the time goes: the output head and the pick take {head:.2f} ms per token in",
            f"every variant (a {cfg.n_embd} x 50257 fp32 matrix-vector product, "
            f"{2 * cfg.n_embd * 50257 / 1e6:.1f} MFLOP, and the argmax",
            "over 50257 logits); the cache removes only the trunk's re-run of the context. So no cache can make",
            f"this model more than {secs[names[2]] / n * 1000 / head:.1f}x faster than nanoGPT's loop here",
            "(its ms/token over the head's); on the 124M model the trunk dominates instead",
            "(bench/sample_gpu.py). Without the head (ms/token minus the head's, derived):",
            f"the cache makes the rest {_rest(secs, names[1], head, n):.1f}x faster like for like and "
            f"{_rest(secs, names[2], head, n):.1f}x against nanoGPT's window.",
            "",
            "The crop: GPT-2's positions are absolute, so a cache cannot slide; when the",
            f"context is full it is cut to its last {keep} tokens and the cache rebuilt in one",
            f"forward (model/generate.py). The nanoGPT variant re-runs the last {block} tokens",
            f"for every token, so its model sees up to {block} tokens of context, the cached one",
            f"{keep}-{block} once the context has overflowed "
            f"({'it does here' if n + len(encode(PROMPT)) > block else 'it does not here'}).",
            "",
        ]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "sample.md")
    args = p.parse_args()
    model, weights = demo_model(args.config)
    with torch.no_grad():
        secs = measure(variants(model, encode(PROMPT), args.tokens), args.rounds)
        head = head_ms(model)
    text = report(secs, head, args.tokens, weights, args, model.cfg)
    print(text)
    write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
