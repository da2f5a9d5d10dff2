"""`python -m pipeline report`: a short text summary of a training run.

Tokens seen, steps done of max_iters, best and last val loss, last train
loss, speed (tokens/s, MFU where logged), time spent in training steps, ETA,
checkpoints and the smoke stamp. Reads the run folder only (model/report.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_CONFIG = None


@dataclass(kw_only=True)
class ReportConfig:
    out_dir: str = field(default="out/gpt2-124m", metadata={"help": "run folder to summarise"})


CONFIG = ReportConfig


def run(cfg: ReportConfig) -> int:
    from model.report import summary_lines

    print("\n".join(summary_lines(cfg.out_dir)))
    return 0
