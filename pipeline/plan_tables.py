"""Tables of `make plan` (pipeline/plan.py): FSDP, time and disk.

The FSDP section: the same config sharded over 2, 4 and 8 GPUs of this size.

For each N, with `parallel: fsdp` (model/fsdp.py, per-GPU memory in
model/memory_fsdp.py): the largest micro-batch per GPU that fits without and
with activation checkpointing, what that needs, and the time floor at 100 % MFU
(one GPU's floor over N: compute splits, communication is not counted). Shown
when the config fits no single card, or when it asks for `parallel: fsdp`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.train_config import TrainConfig

GPU_COUNTS = (2, 4, 8)


def fsdp_rows(
    cfg: TrainConfig,
    budget: int,
    nominal: bool,
    dtype: str,
    sequences: int,
    floor_hours: float | None,
) -> list[dict[str, Any]]:
    from model import memory

    overhead = memory.Overhead.for_card(cfg.compile, nominal)
    sharded = dataclasses.replace(cfg, parallel="fsdp")
    rows = []
    for n in GPU_COUNTS:
        sizes = memory.batch_candidates(sequences, n)
        row: dict[str, Any] = {"gpus": n, "floor_hours": floor_hours / n if floor_hours else None}
        for ac in (False, True):
            w = dataclasses.replace(memory.Workload.from_train(sharded, 1, dtype, n), checkpoint=ac)
            best = memory.largest_fitting(w, overhead, budget, sizes) if sizes else None
            key = "with_ac" if ac else "without_ac"
            row[f"max_micro_batch_{key}"] = best.workload.micro_batch if best else 0
            row[f"required_bytes_{key}"] = best.required if best else 0
        rows.append(row)
    return rows


def fsdp_lines(rows: list[dict[str, Any]], budget: int) -> list[str]:
    lines = [
        f"parallel=fsdp on N GPUs of {budget / 2**30:.2f} GiB (per GPU: 1/N of the weights, "
        "gradients and optimizer state):",
        f"  {'GPUs':>4} {'micro_batch':>11} {'needed GiB':>11} {'with AC':>8} "
        f"{'needed GiB':>11} {'floor h':>8}",
    ]
    for r in rows:
        floor = f"{r['floor_hours']:8.1f}" if r["floor_hours"] is not None else f"{'?':>8}"
        lines.append(
            f"  {r['gpus']:>4} {r['max_micro_batch_without_ac'] or 'none':>11} "
            f"{r['required_bytes_without_ac'] / 2**30:>11.2f} "
            f"{r['max_micro_batch_with_ac'] or 'none':>8} "
            f"{r['required_bytes_with_ac'] / 2**30:>11.2f} {floor}"
        )
    fits = [r for r in rows if r["max_micro_batch_without_ac"] or r["max_micro_batch_with_ac"]]
    if fits:
        r = fits[0]
        how = "" if r["max_micro_batch_without_ac"] else " with activation checkpointing"
        lines.append(
            f"fewest GPUs that train it: {r['gpus']}{how} "
            f"(torchrun --nproc_per_node={r['gpus']} ... parallel=fsdp)"
        )
    else:
        lines.append("not even 8 GPUs of this size hold it: lower block_size or the model size")
    return lines


def time_lines(p: dict[str, Any]) -> list[str]:
    def row(label: str, value: str) -> str:
        return f"  {label:<40}{value:>14}"

    steps = p["total_tokens"] // p["tokens_per_step"]
    lines = [
        "time:",
        row("FLOPs per token (6N + 12 L C T)", f"{p['flops_per_token'] / 1e6:,.1f} M"),
        row(f"tokens ({steps:,} steps)", f"{p['total_tokens'] / 1e9:,.2f} B"),
    ]
    if p["peak_tflops"] is None:
        lines.append("  peak TFLOPS unknown: set gpu=... or peak_tflops=... for the floor time")
    else:
        lines += [
            row(f"peak dense TFLOPS ({p['dtype']})", f"{p['peak_tflops']:,.1f}"),
            row("floor at 100 % MFU", f"{p['floor_hours']:,.1f} h"),
            row(f"expected at {100 * p['mfu_assumed']:.0f} % MFU", f"{p['expected_hours']:,.1f} h"),
        ]
    if p["measured_ms_per_step"] is not None:
        lines.append(
            row(
                f"ETA at the measured {p['measured_ms_per_step']:,.1f} ms/step",
                f"{p['eta_hours']:,.1f} h",
            )
        )
        lines.append(f"  (measured in {p['measured_from']})")
    else:
        lines.append("  measured: none yet (run `make smoke` for a measured ETA)")
    return lines


def disk_lines(out_dir: str, keep: int, p: dict[str, Any]) -> list[str]:
    need, free = p["checkpoints_disk_bytes"], p["disk_free_bytes"]
    verdict = "fits" if need <= free else "DOES NOT FIT: free space or lower keep_ckpts"
    return [
        f"{f'disk of {out_dir}':<58}{'GiB':>8}",
        f"  {'one checkpoint (fp32 weights + optimizer state)':<56}{_gib(p['checkpoint_bytes'])}",
        f"  {f'keep_ckpts {keep} + the one being written':<56}{_gib(need)}",
        f"  {'free now':<56}{_gib(free)}  {verdict}",
    ]


def _gib(n: int) -> str:
    return f"{n / 2**30:8.2f}"
