"""Learning-rate schedule: linear warmup, then cosine decay to `min_lr`.

    step <  W:        lr * (step + 1) / W                   (W = warmup_iters)
    W <= step <= M:   min_lr + 0.5 * (1 + cos(pi * (step - W) / (M - W))) * (lr - min_lr)
    step >  M:        min_lr                                (M = max_iters)

So the first step already moves (lr / W, not 0), the peak `lr` is reached at
step W, and the rate lands on `min_lr` at step M (Loshchilov & Hutter 2017,
SGDR, without restarts; the GPT-3 paper's warmup + cosine).
"""

from __future__ import annotations

import math

from model.train_config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of optimizer step `step` (0-based). A pure function."""
    warmup, total = cfg.warmup_iters, cfg.max_iters
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if step >= total or total <= warmup:
        return cfg.min_lr if step >= total else cfg.lr
    progress = (step - warmup) / (total - warmup)  # 0 -> 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)
