"""`python -m pipeline smoke`: 10 steps, an eval, a checkpoint round trip; writes smoke.ok.

The logic lives in model/smoke.py; this is the stage entry point.
"""

from __future__ import annotations

from model.config import TrainConfig

CONFIG = TrainConfig
DEFAULT_CONFIG = "configs/gpt2-124m.yaml"


def run(cfg: TrainConfig) -> int:
    from model.smoke import run_smoke  # torch is imported only when the stage runs

    r = run_smoke(cfg)
    print(f"smoke: loss {r.losses[0]:.4f} -> {r.losses[-1]:.4f} in {len(r.losses)} steps")
    print(f"smoke: val loss {r.val_loss:.4f}; checkpoint round trip {r.roundtrip[0]:.6f} ok")
    rate = f"smoke: {r.ms_per_step:.1f} ms/step, {r.tokens_per_s:,.0f} tokens/s"
    if r.mfu is not None:
        rate += f", MFU {100 * r.mfu:.1f}%"
    if r.peak_mem_gb is not None:
        rate += f", peak memory {r.peak_mem_gb:.2f} GB"
    print(rate)
    print(f"smoke: greedy tokens {r.sample}")
    print(f"smoke: ok -> {cfg.out_dir}/smoke.ok")
    return 0
