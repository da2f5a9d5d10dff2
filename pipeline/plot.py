"""`python -m pipeline plot`: `<out_dir>/loss.png`, the run's loss curve.

Train loss (thin line) and val loss (dots joined by a line) against tokens
seen, the learning rate on a second axis (dashed), the run name and progress
in the title. Headless (matplotlib's Agg backend); written to a temporary
name and renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.atomic import write_atomically
from pipeline.errors import InputError

DEFAULT_CONFIG = None
FILE = "loss.png"
SMOOTH_FROM = 200  # logged steps from which the train loss is also shown smoothed
CLIP_FRACTION = 0.05  # long runs: the y axis fits the curve after this share of the tokens


@dataclass(kw_only=True)
class PlotConfig:
    out_dir: str = field(default="out/gpt2-124m", metadata={"help": "run folder to plot"})
    dest: str = field(default="", metadata={"help": "output PNG; empty = <out_dir>/loss.png"})


CONFIG = PlotConfig


def _tokens_label(x: float, _pos: object = None) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:g}"


def _running_mean(values: list[float], window: int) -> list[float]:
    """Centred mean over `window` points (narrower at the ends), so the curve does not lag."""
    sums = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
    half = max(window, 1) // 2
    out = []
    for i in range(len(values)):
        lo, hi = max(0, i - half), min(len(values), i + half + 1)
        out.append((sums[hi] - sums[lo]) / (hi - lo))
    return out


def _clip_top(ax: Any, xs: list[float], ys: list[float]) -> str:
    """Long runs: the first minutes fall from ~11 to ~3 nats and would flatten the rest.

    The y axis then ends just above the highest value after the first
    `CLIP_FRACTION` of the tokens; returns a note for the title saying how high
    the start went ("" when nothing was cut).
    """
    late = [y for x, y in zip(xs, ys, strict=True) if x >= CLIP_FRACTION * max(xs)]
    if not late:
        return ""
    top, bottom = max(late), min(ys)
    if max(ys) <= top + 0.5 * (top - bottom):
        return ""  # the start does not dwarf the rest: show everything
    ax.set_ylim(bottom - 0.05 * (top - bottom), top + 0.1 * (top - bottom))
    cut = top + 0.1 * (top - bottom)
    return f"\n(loss axis cut at {cut:.2f}: the run starts at {max(ys):.2f})"


def draw(run: Any, dest: Path) -> Path:
    """`run`: a model.report.RunData. Writes the PNG atomically and returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a headless box
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    few = len(run.train) < 30  # a short run: mark each point so it shows at all
    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    shown_x: list[float] = []
    shown_y: list[float] = []
    if run.train:
        x = [r["tokens"] for r in run.train]
        y = [r["loss"] for r in run.train]
        if len(y) >= SMOOTH_FROM:  # a long run: the raw curve faint, a running mean on top
            ax.plot(x, y, color="tab:blue", lw=0.6, alpha=0.25)
            y = _running_mean(y, len(y) // 50)
            ax.plot(x, y, color="tab:blue", lw=1.4, label="train loss (running mean)")
        else:
            ax.plot(x, y, color="tab:blue", lw=1.2, marker="." if few else None, label="train loss")
        shown_x, shown_y = shown_x + x, shown_y + y
    if run.evals:
        x = [r["tokens"] for r in run.evals]
        y = [r["val_loss"] for r in run.evals]
        ax.plot(
            x,
            y,
            color="tab:orange",
            lw=1.5,
            marker="o" if len(x) <= 40 else None,
            ms=4,
            label="val loss",
        )
        shown_x, shown_y = shown_x + x, shown_y + y
    note = _clip_top(ax, shown_x, shown_y) if len(run.train) >= SMOOTH_FROM else ""
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.xaxis.set_major_formatter(FuncFormatter(_tokens_label))
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    lr = [r for r in run.train if r.get("lr") is not None]
    if lr:
        ax2 = ax.twinx()
        ax2.plot(
            [r["tokens"] for r in lr],
            [r["lr"] for r in lr],
            color="tab:gray",
            lw=1,
            ls="--",
            marker="." if few else None,
            label="learning rate",
        )
        ax2.set_ylabel("learning rate", color="tab:gray")
        ax2.tick_params(axis="y", colors="tab:gray")
        ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.1e}"))
        ax2.set_ylim(bottom=0)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    # below the axes, where it hides no curve
    ax.legend(
        handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False
    )
    step = max([r["step"] for r in run.train + run.evals], default=0)
    max_iters = run.config.get("max_iters")
    tokens = max([r["tokens"] for r in run.train + run.evals], default=0)
    progress = f"step {step:,}" + (f" of {max_iters:,}" if max_iters else "")
    ax.set_title(f"{run.name}: {progress}, {_tokens_label(tokens)} tokens{note}", fontsize=11)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomically(dest, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)
    return dest


def run(cfg: PlotConfig) -> int:
    from model.report import load_run

    data = load_run(cfg.out_dir)
    if not data.train and not data.evals:
        raise InputError(f"{cfg.out_dir}/metrics.jsonl has no records yet; plot after a few steps")
    dest = Path(cfg.dest) if cfg.dest else Path(cfg.out_dir) / FILE
    draw(data, dest)
    print(f"wrote {dest}")
    return 0
