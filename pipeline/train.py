"""`python -m pipeline train`: train, resuming from the newest good checkpoint by itself.

Refuses to start without `out/<run>/smoke.ok` for the same config (run
`make smoke` first); CODEGPT_SKIP_SMOKE_CHECK=1 skips that check (tests,
experts). Under `torchrun --nproc_per_node=N -m pipeline train` it runs DDP.
The loop lives in model/trainer.py.
"""

from __future__ import annotations

import os

from model.config import TrainConfig

CONFIG = TrainConfig
DEFAULT_CONFIG = "configs/gpt2-124m.yaml"


def run(cfg: TrainConfig) -> int:
    from model.smoke import SKIP_ENV, check_stamp
    from model.trainer import train

    if os.environ.get(SKIP_ENV) != "1":
        check_stamp(cfg)
    return train(cfg)
