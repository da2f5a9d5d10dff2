"""The completions server on a GPU: the 124M shape, in one call.

Writes a random init of configs/gpt2-124m.yaml's shape (12 layers, width 768,
context 1024; speed does not depend on the weights) as a run folder in a
temporary directory, serves it with `python -m pipeline serve device=cuda`
(bf16 autocast where the card has it, `dtype: auto`) and measures what
bench/serve_bench.py measures on the CPU: aggregate tokens/s with 1 and
`--clients` (8) streaming clients, greedy, `--tokens` (64) each; time to first
token p50/p99 at both; and one client against `make sample`'s generate() on
the same prompt.

    python3 bench/serve_gpu.py --out "$OUT/serve.md"      # on a GPU
    python3 bench/serve_gpu.py --tiny                     # on the CPU: a tiny model, to know it works

On a lent GPU machine this runs inside bench/gpu_session.sh, which carries
the wheels of the server's packages there (starlette, uvicorn, httptools,
httpx2); only $OUT comes back. Time on an H200 (estimated): about a minute.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.serve_bench import measure, run_folder, table  # noqa: E402
from model.atomic import write_text  # noqa: E402
from model.config import load  # noqa: E402
from model.runtime import device_name  # noqa: E402
from model.train_config import TrainConfig  # noqa: E402

TINY = ["n_layer=2", "n_head=2", "n_embd=64", "block_size=128", "device=cpu", "out_dir=out/tiny"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    p.add_argument("--repeats", type=int, default=2, help="rounds of the three measures")
    p.add_argument("--tiny", action="store_true", help="a tiny model on the CPU")
    p.add_argument("--out", type=Path, help="also write the markdown here")
    args = p.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA GPU: run with --tiny on the CPU", file=sys.stderr)
        return 2
    overrides = TINY if args.tiny else ["out_dir=out/gpt2-124m-random"]
    cfg = load(TrainConfig, REPO / "configs" / "gpt2-124m.yaml", overrides)
    device = "cpu" if args.tiny else "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        run, _ = run_folder(cfg, Path(tmp))
        repeats = measure(run, args, device)
    where = "cpu (--tiny dry run)" if args.tiny else device_name(torch.device("cuda"))
    lines = [
        "# The completions server on a GPU: 124M shape",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- device: {where}, torch {torch.__version__}, dtype auto",
        f"- command: `python bench/serve_gpu.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"- model: {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, context "
        f"{cfg.block_size}, random init; greedy, {args.tokens} tokens per request",
        "",
        *table(repeats),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
