"""`make bench-fim-copy`: does a FIM-trained model read the suffix? A corpus where it must.

Each document is a table of random `key = value` lines, then `# again`, then the same
table again:

    # table
    port = apple
    mode = river
    ...
    # again
    port = apple
    ...

Nothing in a line of the first table can be guessed from what comes before it; a line
of the second table can, by copying from the first (an induction head's job). So:

- the control, a left-to-right run (fim_rate 0), must learn to copy: its loss on the
  second table's lines falls far below its loss on the first table's (that stays near
  the cost of a random key and value). Until it does, the shape and steps are too few
  for any test of copying.
- the FIM run (fim_rate 0.5, half of the examples SPM) is scored on a line of the FIRST
  table as the middle, the text before it as the prefix and the text after it (which
  holds the second table) as the suffix, in PSM and in SPM. If it reads the suffix, it
  copies the line from there: its loss must come down to the control's on the second
  table. Its loss on the same line left to right (the control's view) is the floor of
  a model that ignores the suffix.

Both runs: the same documents, seed, shape and schedule (a tiny GPT, its head the
padded 50304 rows), trained by `python -m pipeline train` on shards written here,
scored at each checkpoint on held-out documents (another seed) by a hand-made forward
(the layouts model/fim.py trains on), mean nats per token of the scored line. With
`--tokenizer p50k` the same text is p50k's (it has no runs of spaces, so only the
sentinels' ids differ).

    python bench/fim_copy_bench.py [--steps 1200] [--out docs/benchmarks/fim_copy.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model import tokenizer  # noqa: E402
from model.atomic import write_text  # noqa: E402
from model.checkpoint import list_checkpoints, load_for_inference  # noqa: E402
from model.shards import write_shard  # noqa: E402
from pipeline.tokenize import manifest  # noqa: E402

LINES = 2  # lines per table (--lines)
SHAPE = [
    "n_layer=2",
    "n_head=2",
    "n_embd=64",
    "block_size=128",
    "micro_batch=8",
    "grad_accum=1",
    "lr=3e-3",
    "min_lr=3e-4",
    "warmup_iters=20",
]
ENV = {**os.environ, "CODEGPT_SKIP_SMOKE_CHECK": "1", "CODEGPT_LOG": "WARNING"}


def words(tok: tokenizer.Tokenizer) -> tuple[list[str], list[str]]:
    """Keys (a line's first token) and values (' word' tokens): one token each, so a line
    is four tokens, `key`, ` =`, ` value`, newline, with ~ln(1500) nats in each word."""
    keys, values = [], []
    for i in range(tok.n_vocab):
        b = tok.token_bytes(i)
        if re.fullmatch(rb"[a-z]{4,7}", b):
            keys.append(b.decode())
        elif re.fullmatch(rb" [a-z]{4,7}", b):
            values.append(b.decode())
    return keys[:1500], values[:1500]


def document(rng: np.random.Generator, keys: list[str], values: list[str], lines: int) -> list[str]:
    """The document's pieces: the header, the table, `# again`, the same table. With
    lines=0 the simplest copy: `#`, then one random word six times."""
    if lines == 0:
        return ["#", *[values[int(rng.integers(len(values)))]] * 6, "\n"]
    ks = rng.choice(len(keys), lines, replace=False)
    vs = rng.integers(0, len(values), lines)
    table = [f"{keys[k]} ={values[v]}\n" for k, v in zip(ks, vs, strict=True)]
    return ["# table\n", *table, "# again\n", *table]


def write_corpus(
    folder: Path, tok: tokenizer.Tokenizer, tokens: int, seed: int, lines: int
) -> None:
    keys, values = words(tok)
    rng = np.random.default_rng(seed)
    ids: list[int] = []
    while len(ids) < tokens:
        ids += [*tok.encode("".join(document(rng, keys, values, lines))), tok.eot]
    stream = np.array(ids, dtype=np.uint16)
    cut = len(stream) * 9 // 10
    shutil.rmtree(folder, ignore_errors=True)
    write_shard(folder, "train", 0, stream[:cut])
    write_shard(folder, "val", 0, stream[cut:])
    manifest.write_for_shards(folder, tok.record())


def line_losses(model: torch.nn.Module, seqs: list[list[int]], spans: list[range]) -> float:
    """Mean nats per token of each sequence's scored span (targets at those positions)."""
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, span in zip(seqs, spans, strict=True):
            x = torch.tensor([ids[:-1]])
            logits, _ = model(x)
            lp = F.log_softmax(logits[0].float(), dim=-1)
            for t in span:  # token t is predicted from position t - 1
                total -= float(lp[t - 1, ids[t]])
                n += 1
    return total / n


def pairs(lines: int) -> list[tuple[int, int]]:
    """(index of a first-table piece, index of its copy) in a document's pieces."""
    if lines == 0:
        return [(1, 2)]  # the word's first use, its second
    return [(1 + i, 2 + lines + i) for i in range(lines)]


def score(
    run: Path, tok: tokenizer.Tokenizer, docs: list[list[str]], lines: int
) -> dict[str, float]:
    """The four losses of the module docstring, on the held-out documents."""
    model, _, _ = load_for_inference(run)
    out: dict[str, list[tuple[list[int], range]]] = {k: [] for k in ("t1", "t2", "psm", "spm")}
    for doc in docs:
        enc = [tok.encode(s) for s in doc]

        def cat(parts: list[list[int]]) -> list[int]:
            return [t for p in parts for t in p]

        for first, second in pairs(lines):  # a line of the first table, its copy
            for key, at in (("t1", first), ("t2", second)):
                before = [tok.eot, *cat(enc[:at])]
                ids = [*before, *enc[at], *cat(enc[at + 1 :])]
                out[key].append((ids, range(len(before), len(before) + len(enc[at]))))
            pre, mid = cat(enc[:first]), enc[first]
            suf = cat(enc[first + 1 :])
            psm = [tok.eot, tok.fim_prefix, *pre, tok.fim_suffix, *suf, tok.fim_middle]
            spm = [tok.eot, tok.fim_prefix, tok.fim_suffix, *suf, tok.fim_middle, *pre]
            for key, head in (("psm", psm), ("spm", spm)):
                out[key].append(([*head, *mid, tok.eot], range(len(head), len(head) + len(mid))))
    return {k: line_losses(model, [s for s, _ in v], [r for _, r in v]) for k, v in out.items()}


def train(data: Path, run: Path, steps: int, fim_rate: float, every: int) -> float:
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "train",
        "--config",
        "configs/demo.yaml",
        f"data={data}",
        f"out_dir={run}",
        f"max_iters={steps}",
        f"fim_rate={fim_rate}",
        f"eval_interval={steps}",
        f"ckpt_interval={every}",
        "keep_ckpts=100",
        *SHAPE,
    ]
    if subprocess.run(cmd, cwd=REPO, env=ENV).returncode:
        raise SystemExit(f"fim_copy_bench: training {run} failed")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--every", type=int, default=300, help="steps between scored checkpoints")
    ap.add_argument("--tokenizer", default="gpt2", choices=tokenizer.NAMES)
    ap.add_argument("--docs", type=int, default=48, help="held-out documents scored")
    ap.add_argument(
        "--lines", type=int, default=LINES, help="lines per table; 0: one word repeated"
    )
    ap.add_argument("--work", type=Path, default=REPO / "data" / "bench" / "fim_copy")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "fim_copy.md")
    args = ap.parse_args()
    tok = tokenizer.get(args.tokenizer)
    data = args.work / f"shards-{tok.name}-{args.lines}"
    write_corpus(data, tok, tokens=(args.steps + 10) * 8 * 128, seed=0, lines=args.lines)
    keys, values = words(tok)
    rng = np.random.default_rng(12345)  # documents no run trained on
    held = [document(rng, keys, values, args.lines) for _ in range(args.docs)]
    runs = {"control": 0.0, "fim": 0.5}
    secs = {
        k: train(data, args.work / f"{k}-{tok.name}-{args.lines}", args.steps, r, args.every)
        for k, r in runs.items()
    }
    rows = []
    for ckpt in list_checkpoints(args.work / f"control-{tok.name}-{args.lines}"):
        step = int(ckpt.name[5:13])
        c = score(ckpt, tok, held, args.lines)
        f = score(args.work / f"fim-{tok.name}-{args.lines}" / ckpt.name, tok, held, args.lines)
        rows.append((step, c, f))
        print(json.dumps({"step": step, "control": c, "fim": f}), flush=True)
    lines = [
        f"# Does FIM read the suffix? ({tok.name}'s sentinels)",
        "",
        f"`python bench/fim_copy_bench.py --steps {args.steps} --lines {args.lines} "
        f"--tokenizer {tok.name}` on "
        f"{platform.node()}, {os.cpu_count()} CPUs, {dt.date.today()}; shape "
        f"{' '.join(SHAPE)}; training {secs['control']:.0f} s (control), "
        f"{secs['fim']:.0f} s (FIM). Mean nats per token of a table line, "
        f"{args.docs} held-out documents x {args.lines} lines, {args.lines} lines a table.",
        "",
        "| step | control: table 1 | control: table 2 (copy) | FIM: table 1, left to right | "
        "FIM: table 1, PSM with suffix | FIM: table 1, SPM with suffix | FIM: table 2 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for step, c, f in rows:
        lines.append(
            f"| {step} | {c['t1']:.3f} | {c['t2']:.3f} | {f['t1']:.3f} | {f['psm']:.3f} | "
            f"{f['spm']:.3f} | {f['t2']:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
