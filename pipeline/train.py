"""`python -m pipeline train`: train, resuming from the newest good checkpoint by itself.

Refuses to start without `out/<run>/smoke.ok` for the same config (run
`make smoke` first); CODEGPT_SKIP_SMOKE_CHECK=1 skips that check (tests,
experts). Under `torchrun --nproc_per_node=N -m pipeline train` it runs DDP.
The loop lives in model/trainer.py.
"""

from __future__ import annotations

from model.train_config import TrainConfig

CONFIG = TrainConfig
DEFAULT_CONFIG = "configs/gpt2-124m.yaml"


def run(cfg: TrainConfig) -> int:
    from model.rundir import check_smoke_stamp
    from model.trainer import train  # torch is imported only when the stage runs

    check_smoke_stamp(cfg)
    return train(cfg)
