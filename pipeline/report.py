"""`python -m pipeline report`: a short text summary of a training run.

Tokens seen, steps done of max_iters, best and last val loss, last train
loss, speed (tokens/s, MFU where logged), time spent in training steps, ETA,
checkpoints and the smoke stamp. Reads the run folder through its owners
(model/rundir.py, model/metrics.py, model/checkpoint.py); loads no checkpoint.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.checkpoint import checkpoint_size, config_from_dict, list_checkpoints, step_of
from model.config import Config, option
from model.errors import CodegptError
from model.manifest import read_manifest
from model.metrics import format_eta
from model.rundir import SMOKE_FILE, load_run, read_smoke_stamp, smoke_fingerprint
from pipeline.tokenize.progress import bytes_per_token, rule_shares, top_languages

DEFAULT_CONFIG = None
RECENT = 5  # logged steps whose mean ms/step gives the ETA


@dataclass(kw_only=True)
class ReportConfig(Config):
    out_dir: str = option("out/gpt2-124m", "run folder to summarise")


CONFIG = ReportConfig


def run(cfg: ReportConfig) -> int:
    print("\n".join(summary_lines(cfg.out_dir)))
    return 0


def train_seconds(train: list[dict[str, Any]]) -> float:
    """Sum over logged lines of ms/step x the steps since the previous line.

    `ms` is the mean wall time per step of its window, so this is the time
    spent in training steps; evals and checkpoint saves are not in it.
    """
    total, prev = 0.0, 0
    for r in sorted(train, key=lambda r: r["step"]):
        total += r["ms"] * (r["step"] - prev) / 1000.0
        prev = r["step"]
    return total


def _smoke_status(folder: Path, config: dict[str, Any]) -> str:
    stamp = read_smoke_stamp(folder)
    if stamp is None:
        return f"not run (no {SMOKE_FILE})"
    if not stamp.readable or stamp.first_loss is None or stamp.last_loss is None:
        return f"{SMOKE_FILE} unreadable; rerun `make smoke`"
    detail = f"loss {stamp.first_loss:.3f} -> {stamp.last_loss:.3f}"
    if not config:
        return f"passed ({detail}); no config.yaml to compare with"
    try:
        same = stamp.config_hash == smoke_fingerprint(config_from_dict(config))
    except CodegptError:  # a config this code no longer reads
        same = False
    if not same:
        return f"passed ({detail}) but for a different config; rerun `make smoke`"
    return f"passed ({detail}), matches config.yaml"


def summary_lines(run_dir: str | Path) -> list[str]:
    """The report: one `key  value` line per fact."""
    folder = Path(run_dir)
    run = load_run(folder)
    max_iters = run.config.get("max_iters")
    last = run.train[-1] if run.train else None
    step = last["step"] if last else 0
    lines = [f"run          {folder} ({run.name})"]
    of = f" / {max_iters:,} ({100 * step / max_iters:.1f}%)" if max_iters else ""
    lines.append(f"steps        {step:,}{of}")
    tokens = max([r["tokens"] for r in run.train + run.evals], default=0)
    lines.append(f"tokens seen  {tokens:,}")
    if run.evals:
        best = min(run.evals, key=lambda r: r["val_loss"])
        ev = run.evals[-1]
        lines.append(
            f"val loss     best {best['val_loss']:.4f} at step {best['step']:,}; "
            f"last {ev['val_loss']:.4f} at step {ev['step']:,}"
        )
        if ev.get("val_by_language"):
            shown = ", ".join(f"{k} {v:.4f}" for k, v in ev["val_by_language"].items())
            lines.append(f"by language  {shown} (step {ev['step']:,}; make eval for all of val)")
    else:
        lines.append("val loss     no eval yet")
    if last is None:
        lines.append("train loss   no logged step yet")
    else:
        lines.append(f"train loss   {last['loss']:.4f} at step {step:,}")
        speed = f"{last['tokens_per_s']:,.0f} tokens/s, {last['ms']:.1f} ms/step"
        if last.get("mfu") is not None:
            speed += f", MFU {100 * last['mfu']:.1f}%"
        if last.get("peak_mem_gb") is not None:
            speed += f", peak memory {last['peak_mem_gb']:.1f} GB"
        lines.append(f"speed        {speed} (last logged step)")
        lines.append(
            f"time so far  {format_eta(train_seconds(run.train))} in training steps "
            "(sum of logged ms/step x steps; evals and checkpoints not counted)"
        )
        lines.append(f"ETA          {_eta(run.train, max_iters)}")
    lines.append(f"checkpoints  {_checkpoints(folder)}")
    lines.append(f"smoke        {_smoke_status(folder, run.config)}")
    return lines + _data_lines(run.config)


def _data_lines(config: dict[str, Any]) -> list[str]:
    """What the model sees: the shard folder's account, from its manifest."""
    data = config.get("data")
    if not data:
        return []
    try:
        m = read_manifest(Path(data))
    except CodegptError as e:
        return [f"data         {data}: {e}"]
    if m is None:
        return [f"data         {data}: no manifest.json"]
    c = m.counts
    state = "" if m.complete else " (tokenize not finished)"
    lines = [
        f"data         {data}{state}: {c.read:,} documents read, {c.tokenized:,} kept; "
        f"{c.tokens.get('train', 0):,} train and {c.tokens.get('val', 0):,} val tokens"
    ]
    if c.read:  # shards listed by other means have no account of documents
        lines.append(f"removed      {rule_shares(c)}")
        lines.append(f"languages    {top_languages(c)}")
        name = m.tokenizer.get("name", "gpt2")
        lines.append(f"tokenizer    {name}: bytes per token {bytes_per_token(c)}")
    return lines


def _eta(train: list[dict[str, Any]], max_iters: int | None) -> str:
    if not max_iters:
        return "? (no config.yaml with max_iters)"
    left = max_iters - train[-1]["step"]
    if left <= 0:
        return "done"
    recent = [r["ms"] for r in train[-RECENT:]]
    ms = statistics.mean(recent)
    return (
        f"{format_eta(left * ms / 1000.0)} for {left:,} steps at {ms:.1f} ms/step "
        f"(mean of the last {len(recent)} logged)"
    )


def _checkpoints(folder: Path) -> str:
    ckpts = list_checkpoints(folder)
    if not ckpts:
        return "none"
    size = sum(checkpoint_size(p) for p in ckpts) / 2**20
    names = ", ".join(p.name for p in ckpts)
    return f"{len(ckpts)} ({names}; newest step {step_of(ckpts[-1]):,}; {size:,.1f} MiB)"
