"""Sampling speed of the 124M model on a GPU: KV cache vs nanoGPT's re-run of the context.

The reference shape (configs/gpt2-124m.yaml: 12 layers, 12 heads, width 768,
context 1024), random init (speed does not depend on the weights), batch 1,
bf16 autocast as `make sample` runs it on a GPU (`dtype: auto`), greedy.
`--tokens` (500) new tokens after a short prompt, timed after a warm-up, with
torch.cuda.synchronize around each run:

- KV cache: model/generate.py (crop to the last 512 tokens and rebuild the
  cache in one forward whenever the 1024-token context is full);
- no cache, nanoGPT window: the last 1024 tokens through the model for every
  token (the head on the last position only).

With 500 tokens after a short prompt the context never reaches 1024, so both
see the same context; `--tokens 3000` also covers the crop. Greedy tokens of
the two are compared (bf16 rounding can make them part ways late; the report
says where).

    python3 bench/sample_gpu.py --out "$OUT/sample.md"     # on a GPU
    python3 bench/sample_gpu.py --tiny                     # on the CPU: a tiny model, to know it works

On a lent GPU machine this runs inside bench/gpu_session.sh (only $OUT comes
back from there). Time on an H200 (estimated): under a minute.
"""

from __future__ import annotations

import argparse
import datetime
import json
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
from model.config import load  # noqa: E402
from model.generate import Sampling, generate  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from model.runtime import device_name, replace, resolve_precision  # noqa: E402
from model.train_config import TrainConfig  # noqa: E402

encode = _tokenizer.get().encode  # GPT-2's (the fixtures' tokenizer)

PROMPT = "import torch\nimport torch.nn as nn\n\n\nclass Model(nn.Module):\n"
TINY = ["n_layer=2", "n_head=2", "n_embd=64", "block_size=64", "device=cpu"]


def first_difference(a: list[int], b: list[int]) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if i is None and len(a) == len(b):
        return "identical"
    return f"part ways at token {i if i is not None else min(len(a), len(b))}"


def timed(fn: Callable[[], list[int]], device: torch.device, rounds: int) -> float:
    secs = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        secs.append(time.perf_counter() - t0)
    return statistics.median(secs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="a tiny model on the CPU")
    p.add_argument("--out", type=Path, help="also write the markdown here")
    p.add_argument("--json", type=Path, help="also write the figures (bench/gpu_summary.py)")
    args = p.parse_args()
    cfg = load(TrainConfig, REPO / "configs" / "gpt2-124m.yaml", TINY if args.tiny else [])
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA GPU: run with --tiny on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.tiny else torch.device("cuda", torch.cuda.current_device())
    precision = resolve_precision(replace(cfg, dtype="auto"), device)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_train(cfg)).to(device).eval()
    cache_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision.name)
    prompt = encode(PROMPT)
    greedy = Sampling(temperature=0.0)

    def run(**kw: object) -> Callable[[], list[int]]:
        return lambda: list(
            generate(
                model,
                prompt,
                args.tokens,
                greedy,
                stop_token=None,
                autocast=precision.autocast if precision.name != "float32" else None,
                cache_dtype=cache_dtype,
                **kw,  # type: ignore[arg-type]
            )
        )

    cached, plain = run(), run(use_cache=False, keep=cfg.block_size)
    outs = [cached(), plain()]  # warm-up; also the tokens to compare
    t_cache = timed(cached, device, args.rounds)
    t_plain = timed(plain, device, args.rounds)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    n = args.tokens
    lines = [
        "# Sampling speed on a GPU: 124M model, KV cache vs nanoGPT's loop",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- device: {device_name(device)}, torch {torch.__version__}, {precision.name}",
        f"- command: `python bench/sample_gpu.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"- model: {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, context "
        f"{cfg.block_size}, random init; batch 1, greedy; {n} new tokens after "
        f"{len(prompt)} prompt tokens; median of {args.rounds}",
        "",
        "| variant | tokens/s | ms/token |",
        "| --- | ---: | ---: |",
        f"| KV cache (model/generate.py) | {n / t_cache:,.0f} | {1000 * t_cache / n:.2f} |",
        f"| no cache, nanoGPT window | {n / t_plain:,.0f} | {1000 * t_plain / n:.2f} |",
        "",
        f"Speed-up: **{t_plain / t_cache:.1f}x**. Greedy tokens: "
        f"{first_difference(outs[0], outs[1])}."
        + (f" Peak GPU memory {mem:.2f} GiB." if mem is not None else ""),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_text(args.out, text)
    if args.json:
        figures = {
            "device": device_name(device),
            "cache_tokens_per_s": n / t_cache,
            "no_cache_tokens_per_s": n / t_plain,
            "speedup": t_plain / t_cache,
        }
        write_text(args.json, json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
