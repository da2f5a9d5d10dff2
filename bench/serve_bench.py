"""`make bench-serve`: the completions server under load, demo model, CPU.

Starts `python -m pipeline serve` over out/demo's newest checkpoint (a random
init of the same shape when there is none: speed does not depend on the
weights) and drives it on loopback with streaming clients, each sending its
requests one after another: greedy, `--tokens` (64) new tokens after the same
short prompt. Measured:

- aggregate tokens/s (completion tokens from `usage` over the wall time of the
  whole round) with 1 client and with `--clients` (8) at once: continuous
  batching should give at least 3x;
- time to first token (request sent -> first text chunk), p50 and p99, at 1
  and 8 clients;
- one client's tokens/s against `make sample`'s generate() in this process on
  the same prompt, model and thread count (the server's overhead: HTTP, JSON,
  SSE and the batching engine): at least 0.9x.

The clients are plain httpx streams (parsing only the `data:` lines), so that
client work takes as little of the box as it can; on a 2-core box they still
share it with the server.

    .venv/bin/python bench/serve_bench.py [--clients 8] [--requests 4] [--tokens 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.atomic import write_text  # noqa: E402
from model.checkpoint import CONFIG, MODEL, list_checkpoints, save_checkpoint  # noqa: E402
from model.config import load  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from model.train_config import TrainConfig  # noqa: E402

PROMPT = "import os\nimport sys\n\n\ndef main(argv):\n"


@dataclass
class Round:
    clients: int
    tokens: int  # completion tokens, all requests
    secs: float  # wall time of the round
    ttft: list[float]  # seconds, one per request

    @property
    def rate(self) -> float:
        return self.tokens / self.secs


def pct(xs: list[float], q: float) -> float:
    """The q-th percentile, nearest rank."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def run_folder(cfg: TrainConfig, where: Path) -> tuple[Path, str]:
    """The run to serve: cfg's out_dir when it has a checkpoint, else a random init in `where`."""
    run = REPO / cfg.out_dir
    if list_checkpoints(run):
        return run, f"{cfg.out_dir}, newest checkpoint"
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_train(cfg))
    out = where / Path(cfg.out_dir).name
    save_checkpoint(out, 0, {MODEL: model.state_dict(), CONFIG: dataclasses.asdict(cfg)})
    return out, f"random init of {cfg.out_dir}'s shape (no checkpoint there)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    run: Path, log: Path, args: list[str], threads: int
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "pipeline", "serve", f"out_dir={run}", f"port={port}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=f, env=env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start: {log.read_text()}")


def one_request(http: httpx.Client, base: str, model: str, tokens: int) -> tuple[int, float]:
    """(completion tokens, seconds to the first text chunk) of one streamed completion."""
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first, done = 0.0, 0
    with http.stream("POST", f"{base}/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if not first and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                done = chunk["usage"]["completion_tokens"]
    return done, first


def load_round(base: str, model: str, clients: int, requests: int, tokens: int) -> Round:
    def client(_: int) -> list[tuple[int, float]]:
        with httpx.Client() as http:
            return [one_request(http, base, model, tokens) for _ in range(requests)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    secs = time.perf_counter() - t0
    return Round(clients, sum(n for n, _ in results), secs, [t for _, t in results])


def sample_rate(run: Path, tokens: int, rounds: int, device: str) -> float:
    """generate()'s tokens/s on the same prompt, as `make sample` runs it (after a warm-up)."""
    from model import tokenizer as _tokenizer
    from model.checkpoint import load_for_inference
    from model.generate import Sampling, generate
    from model.runtime import inference_precision

    encode = _tokenizer.get().encode  # GPT-2's (the fixtures' tokenizer)

    model, cfg, _ = load_for_inference(run)
    where, precision, cache_dtype = inference_precision(cfg, device, "auto")
    model.to(where)
    ids, greedy = encode(PROMPT), Sampling(temperature=0)
    rates = []
    for i in range(rounds + 1):
        if where.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        n = len(
            list(
                generate(
                    model, ids, tokens, greedy, autocast=precision.autocast, cache_dtype=cache_dtype
                )
            )
        )
        if where.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first is the warm-up
            rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def measure(run: Path, args: argparse.Namespace, device: str) -> list[tuple[Round, Round, float]]:
    """(1 client, N clients, sample's tokens/s), `args.repeats` times, interleaved so that
    each repeat's three figures are taken close together on a shared box: the server
    idles (no CPU) while generate() runs here with the server's thread count."""
    torch.set_num_threads(args.threads)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        server_args = [f"device={device}", f"max_batch={max(8, args.clients)}"]
        proc, base = start_server(run, Path(tmp) / "server.log", server_args, args.threads)
        try:
            model = httpx.get(f"{base}/v1/models").json()["data"][0]["id"]
            load_round(base, model, 1, 1, args.tokens)  # warm-up
            for _ in range(args.repeats):
                single = load_round(base, model, 1, args.requests * 2, args.tokens)
                many = load_round(base, model, args.clients, args.requests, args.tokens)
                out.append((single, many, sample_rate(run, args.tokens, 5, device)))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return out


def table(repeats: list[tuple[Round, Round, float]]) -> list[str]:
    """Each repeat's row, then the medians of the per-repeat ratios (the targets' figures)."""

    def row(k: int, r: Round) -> str:
        p50, p99 = 1000 * pct(r.ttft, 50), 1000 * pct(r.ttft, 99)
        return (
            f"| {k} | {r.clients} | {len(r.ttft)} | {r.tokens} | {r.rate:,.0f} | "
            f"{p50:.0f} | {p99:.0f} |"
        )

    lines = [
        "| repeat | streaming clients | requests | tokens | aggregate tokens/s | TTFT p50 ms "
        "| TTFT p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, (single, many, _) in enumerate(repeats, 1):
        lines += [row(k, single), row(k, many)]
    batching = [many.rate / single.rate for single, many, _ in repeats]
    overhead = [single.rate / sample for single, _, sample in repeats]
    many = repeats[0][1].clients
    samples = ", ".join(f"{s:,.0f}" for _, _, s in repeats)
    return [
        *lines,
        "",
        f"- {many} clients against 1, aggregate tokens/s, median of the repeats: "
        f"**{statistics.median(batching):.1f}x** (target >= 3x; each: "
        f"{', '.join(f'{b:.1f}x' for b in batching)})",
        f"- 1 client against `make sample` (generate() in-process, same prompt; {samples} "
        f"tokens/s), median: **{statistics.median(overhead):.2f}x** (target >= 0.9x; each: "
        f"{', '.join(f'{o:.2f}x' for o in overhead)})",
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads (both sides)"
    )
    p.add_argument("--repeats", type=int, default=3, help="rounds of the three measures")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "serve.md")
    args = p.parse_args()
    cfg = load(TrainConfig, args.config)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        run, weights = run_folder(cfg, Path(tmp))
        repeats = measure(run, args, "cpu")
    cmd = "python bench/serve_bench.py " + " ".join(sys.argv[1:])
    text = "\n".join(
        [
            "# The completions server: continuous batching and its overhead (CPU, demo model)",
            "",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
            f"- machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{args.threads} torch threads (server and sample), load average before "
            f"{load_before:.2f}",
            f"- command: `{cmd.strip()}`",
            f"- model: {args.config.name} shape ({cfg.n_layer} layers, width {cfg.n_embd}, "
            f"context {cfg.block_size}), {weights}; fp32",
            f"- work: greedy, {args.tokens} tokens per request after the same prompt; each "
            "client streams its requests one after another; server and clients share the box",
            "",
            *table(repeats),
            "",
        ]
    )
    print(text)
    write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
