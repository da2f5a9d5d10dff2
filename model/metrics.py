"""The run's `metrics.jsonl` and the progress line.

One JSON object per line, appended and flushed:

- a logged training step: `step` (optimizer steps done), `loss`, `lr`,
  `tokens` (seen so far, all ranks), `ms` (mean wall time per step since the
  previous line), `tokens_per_s` (the whole job's, all ranks), and on a GPU
  `mfu` (per GPU: MfuMeter) and `peak_mem_gb` (this rank's peak allocation
  since micro_batch was resolved: the autobatch trials are not in it);
  `bad_steps` when steps were skipped by the loss guard;
- an eval: `step`, `val_loss`, `tokens`.

On resume from step k the lines with `step > k` are dropped first, so the
file of a resumed run holds the same steps as an uninterrupted run's. This
module is the file's one writer (`MetricsLog`) and one reader
(`read_metrics`), which skips a line cut by a kill with a warning.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.atomic import write_text
from model.dashboard import Dashboard

log = logging.getLogger(__name__)

FILE = "metrics.jsonl"


class MetricsLog:
    """The one writer of metrics.jsonl; with `tensorboard`, each record also goes to the
    run's TensorBoard scalars (model/dashboard.py)."""

    def __init__(self, run_dir: Path, tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / FILE
        self.dashboard = Dashboard(run_dir) if tensorboard else None

    def truncate_after(self, step: int) -> None:
        """Keep only the records with `step <= step` (all gone for step < 0); the dashboard
        hides its older events from step + 1 on."""
        if self.dashboard is not None:
            self.dashboard.close()
            self.dashboard = Dashboard(self.dashboard.folder.parent, purge_step=max(0, step + 1))
        if not self.path.exists():
            return
        kept = [line for line, rec in _parse(self.path) if rec["step"] <= step]
        write_text(self.path, "".join(f"{line}\n" for line in kept))

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.dashboard is not None:
            self.dashboard.write(record)

    def close(self) -> None:
        if self.dashboard is not None:
            self.dashboard.close()


def _parse(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) for every good line. A line cut short by a kill (or any line that
    is not a JSON object with an integer `step`) is skipped with one warning naming it:
    it never costs the good lines around it."""
    good: list[tuple[str, dict[str, Any]]] = []
    bad: list[int] = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            good.append((line, rec))
        else:
            bad.append(n)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        log.warning(
            "%s: skipped %d unreadable line(s) (line %s; cut by a kill?); kept the other %d",
            path,
            len(bad),
            shown,
            len(good),
        )
    return good


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The one reader of metrics.jsonl: its records in file order; [] when there is none."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return []
    return [rec for _, rec in _parse(path)]


@dataclass
class LossWindow:
    """The finite train losses since the last metrics line: their sum and count.

    The logged `loss` is their mean, so the curve shows the interval, not the one
    batch that happened to be last; it is in the checkpoint, so a resumed run logs
    the same means.
    """

    total: float = 0.0
    count: int = 0

    def add(self, loss: float, ok: bool) -> None:
        if ok:
            self.total += loss
            self.count += 1

    def mean(self, fallback: float) -> float:
        """The mean, then an empty window; `fallback` when no step of it was finite."""
        value = self.total / self.count if self.count else fallback
        self.total, self.count = 0.0, 0
        return value

    def state_dict(self) -> dict[str, float | int]:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}  # checkpoints from before the window: start it empty
        self.total, self.count = float(state.get("total", 0.0)), int(state.get("count", 0))


def peak_mem_gb(device: torch.device) -> float | None:
    """GiB at the allocator's peak since its last reset (model/autobatch.resolve_config's)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d{h:02d}h{m:02d}m" if d else f"{h}h{m:02d}m{s:02d}s"


def progress_line(rec: dict[str, Any], max_iters: int) -> str:
    """`step 120/600 | loss 5.1234 | lr 1.00e-03 | 85.3 ms/step | 24,012 tok/s | ETA 0h00m41s`."""
    parts = [
        f"step {rec['step']}/{max_iters}",
        f"loss {rec['loss']:.4f}",
        f"lr {rec['lr']:.2e}",
        f"{rec['ms']:.1f} ms/step",
        f"{rec['tokens_per_s']:,.0f} tok/s",
    ]
    if rec.get("mfu") is not None:
        parts.append(f"MFU {100 * rec['mfu']:.1f}%")
    if rec.get("peak_mem_gb") is not None:
        parts.append(f"mem {rec['peak_mem_gb']:.1f} GB")
    if rec.get("bad_steps"):
        parts.append(f"skipped {rec['bad_steps']}")
    eta = (max_iters - rec["step"]) * rec["ms"] / 1000.0
    parts.append(f"ETA {format_eta(eta)}")
    return " | ".join(parts)


class MfuMeter:
    """Model FLOPs utilisation of one GPU: achieved model FLOP/s over its peak dense rate.

    FLOPs per token come from `model.hardware.flops_per_token` (6N for the
    forward and backward matmuls, Kaplan et al. 2020, plus the attention term
    12 * n_layer * n_embd * block_size; PaLM appendix B). On the CPU there is
    no honest peak to divide by, so MFU is left out (None).
    """

    def __init__(
        self,
        device: torch.device,
        precision: str,
        n_params_non_embedding: int,
        n_layer: int,
        n_embd: int,
        block_size: int,
        peak_override: float,
    ) -> None:
        hardware = importlib.import_module("model.hardware")  # the planner's FLOP and peak tables
        self.flops_per_token: float = hardware.flops_per_token(
            n_params_non_embedding, n_layer, n_embd, block_size
        )
        self.peak: float | None = None  # TFLOP/s of one GPU
        if device.type != "cuda":
            return
        if peak_override > 0:
            self.peak = peak_override
        else:
            dtype = "float32" if precision == "float32" else "bfloat16"
            self.peak = hardware.peak_tflops(torch.cuda.get_device_name(device), dtype)

    def __call__(self, tokens_per_s: float, gpus: int = 1) -> float | None:
        """MFU per GPU from the whole job's `tokens_per_s`, made by `gpus` GPUs (the world size)."""
        if self.peak is None or self.flops_per_token <= 0:
            return None
        hardware = importlib.import_module("model.hardware")
        return float(hardware.mfu(tokens_per_s, self.flops_per_token, self.peak, gpus))
