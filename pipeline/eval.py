"""`make eval`: a run's checkpoint on the whole val split, per language, in bits per byte.

    python -m pipeline eval out_dir=out/<run> [ckpt=FILE] [max_tokens=N]

Every val token but the first is scored once, as a target: the split is cut
into windows of block_size + 1 tokens (the last, shorter one included) and
each window's per-token losses (model/scoring.py: chunked, never the full
logits; bf16 autocast on a GPU) are attributed to the language of the
document they belong to, from the val document index beside the shards.
For each language and overall: documents, tokens, UTF-8 bytes, the loss in
nats per token and bits per byte (sum of nats / ln 2 / bytes). The table goes
to stdout and the numbers to `out/<run>/eval/step-NNNNNNN.json` (atomically).
Memory is one micro-batch of windows and one chunk of logits.

Fill in the middle, beside it: `fim_windows` val windows spread over the split
are made FIM examples with a fixed seed (model/fim.py, every piece PSM), the
same middles for every run. Each middle token is scored twice: given prefix
and suffix (the PSM example), and given the prefix only (the same pieces laid
out prefix, middle, suffix, no sentinels), per language. A FIM-trained model
uses the suffix when its first loss is below the second; a left-to-right
model's second number is the baseline it beats.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.atomic import write_text
from model.config import Config, option
from model.progress import Ticker
from model.train_config import Device, DType

log = logging.getLogger(__name__)

DEFAULT_CONFIG = None


@dataclass(kw_only=True)
class EvalConfig(Config):
    out_dir: str = option("out/gpt2-124m", "run folder; its newest checkpoint is scored")
    ckpt: str = option("", "one checkpoint file instead of out_dir's newest")
    data: str = option("", "shard folder whose val split is scored; '' = the run's own")
    max_tokens: int = option(0, "score the first N val tokens; 0 = the whole split", ge=0)
    micro_batch: int = option(8, "windows per forward pass", ge=1)
    device: Device = option("auto", "auto, cuda or cpu")
    dtype: DType = option("auto", "auto (bf16 on a GPU, fp32 on the CPU), or a dtype")
    progress_seconds: float = option(10.0, "seconds between progress lines on stderr")
    fim_windows: int = option(
        256, "val windows made fill-in-the-middle examples (fixed seed); 0 = no FIM rows", ge=0
    )


CONFIG = EvalConfig


def run(cfg: EvalConfig) -> int:
    import torch

    from model import tokenizer
    from model.checkpoint import load_for_inference
    from model.dataset import open_dataset
    from model.loader import Windows
    from model.runtime import replace, resolve_device, resolve_precision
    from model.scoring import Languages, Tally, token_losses

    target = Path(cfg.ckpt or cfg.out_dir)
    model, train_cfg, step = load_for_inference(target)
    device = resolve_device(replace(train_cfg, device=cfg.device))
    precision = resolve_precision(replace(train_cfg, dtype=cfg.dtype), device)
    model.to(device)
    tok = tokenizer.get(train_cfg.tokenizer)  # the checkpoint's; the shards must be its too
    data = open_dataset(
        cfg.data or train_cfg.data, train_cfg.vocab_size, allow_partial=True, want=tok.name
    )
    index = data.val_index()
    if index is None:
        log.warning("%s has no val document index: one row for all languages", data.folder)
    val = Windows(data.shards["val"], "val", train_cfg.block_size, train_cfg.vocab_size)
    tally = Tally(Languages(index), tok)
    plan = _windows(val, cfg.max_tokens)
    progress = _Progress(plan.targets, cfg.progress_seconds)
    with torch.no_grad(), precision.autocast():
        for x, y, pos in _batches(val, plan, cfg.micro_batch, device):
            losses = token_losses(model, x, y, train_cfg.loss_chunk).cpu().numpy()
            tally.add(losses.ravel(), y.cpu().numpy().ravel(), pos.ravel())
            progress.tick(pos.size)
    rows = list(tally.rows())
    with torch.no_grad(), precision.autocast():
        fim_rows = {
            name: list(t.rows())
            for name, t in _fim_pass(model, val, Languages(index), cfg, train_cfg.loss_chunk, tok)
        }
    run_dir = target.parent if target.is_file() else target
    body = {
        "step": step,
        "checkpoint": str(target),
        "data": str(data.folder),
        "complete_data": data.complete,
        "tokens_scored": plan.targets,
        "whole_split": plan.tail is not None,
        "rows": rows,
        "fim": {"windows": min(cfg.fim_windows, val.count), "seed": FIM_SEED, **fim_rows},
    }
    dest = write_text(run_dir / "eval" / f"step-{step:07d}.json", json.dumps(body, indent=1) + "\n")
    print(render(rows, step, dest, fim_rows))
    return 0


@dataclass(frozen=True)
class _Plan:
    windows: np.ndarray  # window indices, each T targets
    tail: int | None  # targets of the short last stretch; None when only a sample is scored
    targets: int


def _windows(val: Any, max_tokens: int) -> _Plan:
    """Every window and the tail (the whole split: each token but the first once), or, with
    max_tokens, that many targets in windows spread evenly over the split."""
    T, W = val.T, val.count
    if max_tokens and max_tokens < val.tokens - 1:
        n = max(1, min(W, max_tokens // T))
        return _Plan(val.spread(n), None, n * T)
    tail = val.tokens - 1 - W * T
    return _Plan(np.arange(W, dtype=np.int64), tail, val.tokens - 1)


def _batches(val: Any, plan: _Plan, micro_batch: int, device: Any) -> Any:
    """(x, y, the target positions) for the planned windows, then the tail."""
    import torch

    T = val.T
    for i in range(0, len(plan.windows), micro_batch):
        ks = plan.windows[i : i + micro_batch]
        x, y = val.batch(ks)
        yield torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), val.targets(ks)
    if plan.tail:
        start = val.count * T
        span = val.read(start, plan.tail + 1)
        pos = start + 1 + np.arange(plan.tail)[None, :]
        x, y = torch.from_numpy(span[None, :-1]), torch.from_numpy(span[None, 1:])
        yield x.to(device), y.to(device), pos


FIM_SEED = 0  # make eval's FIM examples: the same middles for every run and every step


def _fim_pass(model: Any, val: Any, langs: Any, cfg: EvalConfig, chunk: int, tok: Any) -> Any:
    """(name, Tally) for the middle tokens given prefix and suffix, and given the prefix
    only; a token counts in both or in neither (the PSM example is 3 tokens longer, so a
    window's end can cut a middle token from one layout and not the other)."""
    from model.scoring import Tally

    tallies = {"with_suffix": Tally(langs, tok), "prefix_only": Tally(langs, tok)}
    if not cfg.fim_windows:
        return []
    ks = val.spread(min(cfg.fim_windows, val.count))
    device = next(model.parameters()).device
    for i in range(0, len(ks), cfg.micro_batch):
        batch = ks[i : i + cfg.micro_batch]
        rows = val.rows(batch)
        scored = {
            name: _middles(model, rows, batch, val.T, name == "prefix_only", chunk, device, tok)
            for name in tallies
        }
        common = sorted(scored["with_suffix"].keys() & scored["prefix_only"].keys())
        for name, tally in tallies.items():
            got = np.array([scored[name][k] for k in common], dtype=np.float64).reshape(-1, 3)
            tally.add(got[:, 0], got[:, 1].astype(np.int64), got[:, 2].astype(np.int64))
    return list(tallies.items())


def _middles(
    model: Any,
    rows: np.ndarray,
    ks: np.ndarray,
    T: int,
    l2r: bool,
    chunk: int,
    device: Any,
    tok: Any,
) -> dict[tuple[int, int, int], tuple[float, int, int]]:
    """(window, piece, k-th middle token) -> (its loss, its id, the piece's val position)."""
    import torch

    from model import fim
    from model.scoring import token_losses

    rates = fim.Rates(1.0, 0.0)  # every piece, PSM
    exs = [
        fim.transform(r, rates, fim.window_rng(FIM_SEED, 0, int(k)), tok, l2r)
        for r, k in zip(rows, ks, strict=True)
    ]
    tokens = np.stack([e.tokens if e is not None else r for e, r in zip(exs, rows, strict=True)])
    tokens = np.where(tokens == tok.fim_pad, tok.eot, tokens)  # never scored; a valid id
    x, y = (torch.from_numpy(a).to(device) for a in (tokens[:, :-1], tokens[:, 1:]))
    losses = token_losses(model, x, y, chunk).cpu().numpy()  # (B, T)
    out: dict[tuple[int, int, int], tuple[float, int, int]] = {}
    for b, ex in enumerate(exs):
        if ex is None:
            continue
        first: dict[int, int] = {}
        for j in np.flatnonzero(ex.role[1:] == fim.MIDDLE).tolist():  # target j is token j+1
            o = int(ex.origin[j + 1])
            rank = j - first.setdefault(o, j)
            out[(b, o, rank)] = (float(losses[b, j]), int(tokens[b, j + 1]), int(ks[b]) * T + o)
    return out


def render(
    rows: list[dict[str, Any]],
    step: int,
    dest: Path,
    fim_rows: dict[str, list[dict[str, Any]]] | None = None,
) -> str:
    head = f"{'language':<16} {'documents':>10} {'tokens':>12} {'bytes':>14} {'loss':>8} {'bits/byte':>10}"
    lines = [f"eval: step {step:,}, val split", head, "-" * len(head)]
    for r in sorted(rows[:-1], key=lambda r: -r["tokens"]) + rows[-1:]:
        loss = "-" if math.isnan(r["loss"]) else f"{r['loss']:.4f}"
        bpb = "-" if math.isnan(r["bits_per_byte"]) else f"{r['bits_per_byte']:.4f}"
        lines.append(
            f"{r['language']:<16} {r['documents']:>10,} {r['tokens']:>12,} {r['bytes']:>14,} "
            f"{loss:>8} {bpb:>10}"
        )
    if fim_rows:
        head = f"{'language':<16} {'middle tokens':>14} {'prefix+suffix':>14} {'prefix only':>12}"
        lines += ["fill in the middle: loss of the middle tokens given", head, "-" * len(head)]
        both = list(zip(fim_rows["with_suffix"], fim_rows["prefix_only"], strict=True))
        for a, b in sorted(both[:-1], key=lambda r: -r[0]["tokens"]) + both[-1:]:
            if not a["tokens"]:
                continue
            lines.append(
                f"{a['language']:<16} {a['tokens']:>14,} {a['loss']:>14.4f} {b['loss']:>12.4f}"
            )
    lines.append(f"eval: wrote {dest}")
    return "\n".join(lines)


class _Progress:
    def __init__(self, total: int, every: float) -> None:
        self.total, self.ticker, self.done = total, Ticker(every), 0

    def tick(self, n: int) -> None:
        self.done += n
        if not self.ticker.due():
            return
        log.info(
            "%s of %s tokens, %.0f tokens/s, ETA %s",
            f"{self.done:,}",
            f"{self.total:,}",
            self.ticker.rate(self.done),
            self.ticker.eta(self.done, self.total - self.done),
        )
