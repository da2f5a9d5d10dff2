"""`python -m pipeline plot`: `<out_dir>/loss.png`, the run's loss curve.

Train loss (thin line) and val loss (dots joined by a line) against tokens
seen, the learning rate on a second axis (dashed), the run name and progress
in the title. Headless (matplotlib's Agg backend); written to a temporary
name and renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.atomic import write_atomically
from model.config import Config, option
from model.errors import InputError

DEFAULT_CONFIG = None
FILE = "loss.png"
SMOOTH_FROM = 200  # logged steps from which the train loss is also shown smoothed
CLIP_FRACTION = 0.05  # long runs: the y axis fits the curve after this share of the tokens


@dataclass(kw_only=True)
class PlotConfig(Config):
    out_dir: str = option("out/gpt2-124m", "run folder to plot")
    dest: str = option("", "output PNG; empty = <out_dir>/loss.png")


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
    """`run`: a model.rundir.RunData. Writes the PNG atomically and returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a headless box
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    few = len(run.train) < 30  # a short run: mark each point so it shows at all
    by_lang = [r for r in run.evals if r.get("val_by_language")]
    if by_lang:  # a second panel: the val loss of each language
        fig, (ax, ax_lang) = plt.subplots(
            2, 1, figsize=(9, 8), dpi=120, sharex=True, height_ratios=(3, 2)
        )
        _plot_languages(ax_lang, by_lang)
    else:
        fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    xs, ys = _plot_train(ax, run.train, few)
    vx, vy = _plot_val(ax, run.evals)
    note = _clip_top(ax, xs + vx, ys + vy) if len(run.train) >= SMOOTH_FROM else ""
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.xaxis.set_major_formatter(FuncFormatter(_tokens_label))
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = _plot_lr(ax, run.train, few)
    # below the axes, where it hides no curve; with a second panel there, at the top right
    where = (
        {"loc": "upper right"}
        if by_lang
        else {"loc": "upper center", "bbox_to_anchor": (0.5, -0.13)}
    )
    ax.legend(handles + h2, labels + l2, ncol=3, frameon=False, **where)
    ax.set_title(_title(run, note), fontsize=11)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomically(dest, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)
    return dest


def _plot_train(ax: Any, train: list[dict[str, Any]], few: bool) -> tuple[list, list]:
    """The train loss; a long run gets the raw curve faint and a running mean on top."""
    if not train:
        return [], []
    x = [r["tokens"] for r in train]
    y = [r["loss"] for r in train]
    if len(y) >= SMOOTH_FROM:
        ax.plot(x, y, color="tab:blue", lw=0.6, alpha=0.25)
        y = _running_mean(y, len(y) // 50)
        ax.plot(x, y, color="tab:blue", lw=1.4, label="train loss (running mean)")
    else:
        ax.plot(
            x,
            y,
            color="tab:blue",
            lw=1.2,
            marker="." if few else None,
            label="train loss (interval mean)",
        )
    return x, y


def _plot_val(ax: Any, evals: list[dict[str, Any]]) -> tuple[list, list]:
    if not evals:
        return [], []
    x = [r["tokens"] for r in evals]
    y = [r["val_loss"] for r in evals]
    marker = "o" if len(x) <= 40 else None
    ax.plot(x, y, color="tab:orange", lw=1.5, marker=marker, ms=4, label="val loss")
    return x, y


def _plot_languages(ax: Any, evals: list[dict[str, Any]]) -> None:
    """One val curve per language of the periodic eval (the top languages, then other)."""
    from matplotlib.ticker import FuncFormatter

    names = list(evals[-1]["val_by_language"])
    for name in names:
        pts = [
            (r["tokens"], r["val_by_language"][name]) for r in evals if name in r["val_by_language"]
        ]
        marker = "o" if len(pts) <= 40 else None
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2, marker=marker, ms=3, label=name)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("val loss by language")
    ax.xaxis.set_major_formatter(FuncFormatter(_tokens_label))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, len(names)), frameon=False)


def _plot_lr(ax: Any, train: list[dict[str, Any]], few: bool) -> tuple[list, list]:
    """The learning rate on a second y axis (dashed); its legend handles and labels."""
    from matplotlib.ticker import FuncFormatter

    lr = [r for r in train if r.get("lr") is not None]
    if not lr:
        return [], []
    ax2 = ax.twinx()
    x, y = [r["tokens"] for r in lr], [r["lr"] for r in lr]
    marker = "." if few else None
    ax2.plot(x, y, color="tab:gray", lw=1, ls="--", marker=marker, label="learning rate")
    ax2.set_ylabel("learning rate", color="tab:gray")
    ax2.tick_params(axis="y", colors="tab:gray")
    ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.1e}"))
    ax2.set_ylim(bottom=0)
    handles, labels = ax2.get_legend_handles_labels()
    return handles, labels


def _title(run: Any, note: str) -> str:
    recs = run.train + run.evals
    step = max([r["step"] for r in recs], default=0)
    max_iters = run.config.get("max_iters")
    tokens = max([r["tokens"] for r in recs], default=0)
    progress = f"step {step:,}" + (f" of {max_iters:,}" if max_iters else "")
    return f"{run.name}: {progress}, {_tokens_label(tokens)} tokens{note}"


def run(cfg: PlotConfig) -> int:
    from model.rundir import load_run

    data = load_run(cfg.out_dir)
    if not data.train and not data.evals:
        raise InputError(f"{cfg.out_dir}/metrics.jsonl has no records yet; plot after a few steps")
    dest = Path(cfg.dest) if cfg.dest else Path(cfg.out_dir) / FILE
    draw(data, dest)
    print(f"wrote {dest}")
    return 0
