"""The live dashboard: every metrics.jsonl record as TensorBoard scalars in `out/<run>/tb/`.

metrics.jsonl stays the record a run is judged by (report, plot, resume);
the event files are a view of it for `make tensorboard`, written by
TensorBoard's own writer (torch.utils.tensorboard). Each record's figures go
to fixed tags at the record's step:

    train/loss  train/loss_step  train/lr  train/grad_norm
    speed/tokens_per_s  speed/mfu  memory/peak_gb
    val/loss  val/<language>

Resume: metrics.jsonl drops its lines after the step a run resumes from
(model/metrics.py); event files are append-only, so the writer opens with
`purge_step` = that step + 1 and TensorBoard hides the older session's events
from there on. A resumed run therefore shows each step once, as
metrics.jsonl does. The writer is made on the first record (only the main
rank writes records), flushed after each, so a kill loses at most the
record being written; `tensorboard: false` writes none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FOLDER = "tb"

# record key -> tag
TAGS = {
    "loss": "train/loss",
    "loss_step": "train/loss_step",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "speed/tokens_per_s",
    "mfu": "speed/mfu",
    "peak_mem_gb": "memory/peak_gb",
    "val_loss": "val/loss",
}


class Dashboard:
    """TensorBoard scalars of a run's records; `purge_step`: hide older events from there."""

    def __init__(self, run_dir: str | Path, purge_step: int | None = None) -> None:
        self.folder = Path(run_dir) / FOLDER
        self.purge_step = purge_step
        self._writer: Any = None

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        writer = self._open()
        for key, tag in TAGS.items():
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(tag, float(value), step)
        for lang, value in (record.get("val_by_language") or {}).items():
            writer.add_scalar(f"val/{lang}", float(value), step)
        writer.flush()

    def _open(self) -> Any:
        if self._writer is None:
            # imported here: TensorBoard's import costs about a second, and a run with
            # `tensorboard: false` (or a rank that writes nothing) never pays it
            from torch.utils.tensorboard import SummaryWriter

            self.folder.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(self.folder), purge_step=self.purge_step)
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
