"""`python -m pipeline plan [key=value ...]`: what a training config needs, before launching.

Memory: the GPU memory of each part at the config's micro-batch (model/memory.py
explains every formula), the peak of a training step and of an eval step,
the largest micro-batch that fits `gpu_gb`, and the grad_accum that keeps the
tokens per step. Time: FLOPs per token, the card's peak dense TFLOPS, the
floor time at 100 % MFU, the time at an assumed MFU, and, once `make smoke`
or training has run, the ETA from the measured step time.

    python -m pipeline plan gpu_gb=12 gpu="NVIDIA GeForce RTX 4070"
    python -m pipeline plan gpu_gb=12 loss=plain micro_batch=8     # the story's OOM
    python -m pipeline plan format=json                            # on a machine with the GPU
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from model.config import option
from model.errors import ConfigError
from model.train_config import TrainConfig
from pipeline.plan_tables import disk_lines, fsdp_lines, fsdp_rows, time_lines

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PlanConfig(TrainConfig):
    gpu_gb: float = option(
        0.0, "GPU memory in GiB (nvidia-smi's total); 0 = the present GPU's", ge=0
    )
    gpu: str = option("", 'device name for the peak TFLOPS, e.g. "NVIDIA GeForce RTX 4070"')
    format: Literal["table", "json"] = option("table", "table or json")
    mfu: float = option(0.35, "assumed MFU for the expected time", gt=0, le=1)
    exact: bool = option(False, "also trace the real model on fake tensors (slower, no GPU)")
    gpus: int = option(
        1, "GPUs of the run (torchrun's processes); with parallel=fsdp each holds 1/gpus", ge=1
    )
    # `loss` (fused | lean | plain) is TrainConfig's: the plan shows the loss the run would use


CONFIG = PlanConfig
DEFAULT_CONFIG = "configs/gpt2-124m.yaml"


@dataclass
class Card:
    name: str  # device name ("" when unknown)
    budget: int  # bytes the plan may use
    nominal: bool  # budget is the marketed size (the driver's reserve is then counted)
    capability: tuple[int, int] | None  # CUDA compute capability; None: a card we do not know


def _card(cfg: PlanConfig) -> Card:
    import torch

    from model.hardware import find_gpu
    from model.memory import GiB

    present = torch.cuda.is_available()
    if cfg.gpu_gb <= 0 and not present:
        raise ConfigError(
            "gpu_gb=0 means the present GPU's memory, but no CUDA GPU is visible; "
            'pass the card\'s size, e.g. gpu_gb=12 gpu="NVIDIA GeForce RTX 4070"'
        )
    name, capability = cfg.gpu, None
    if name:  # a named card: its capability from the table
        spec = find_gpu(name)
        capability = spec.capability if spec is not None else None
    elif present:  # the present card: what the runtime will ask it
        name, capability = torch.cuda.get_device_name(), torch.cuda.get_device_capability()
    if cfg.gpu_gb > 0:
        return Card(name, int(cfg.gpu_gb * GiB), nominal=True, capability=capability)
    _free, total = torch.cuda.mem_get_info()
    return Card(name, total, nominal=False, capability=capability)


def _dtype(cfg: PlanConfig, card: Card) -> str:
    """`auto` as the runtime resolves it (model.hardware.auto_dtype), for the card."""
    if cfg.dtype != "auto":
        return cfg.dtype
    from model.hardware import auto_dtype

    return auto_dtype("cuda", card.capability)  # an unknown card: assumed to have bf16


def _measured(cfg: PlanConfig) -> tuple[float, str, int] | None:
    """(ms per step, where from, steps done) from metrics.jsonl, else smoke.ok; None if neither."""
    from model.metrics import FILE, read_metrics
    from model.rundir import SMOKE_FILE, read_smoke_stamp

    run = Path(cfg.out_dir)
    steps = [r for r in read_metrics(run) if isinstance(r.get("ms"), (int, float))]
    if steps:
        return float(steps[-1]["ms"]), str(run / FILE), int(steps[-1]["step"])
    stamp = read_smoke_stamp(run)
    ms = stamp.ms_per_step if stamp is not None else None
    return (
        (float(ms), str(run / SMOKE_FILE), 0) if isinstance(ms, (int, float)) and ms > 0 else None
    )


def build_plan(cfg: PlanConfig) -> dict[str, Any]:
    """Everything the table shows, as one JSON-ready dict (byte counts are ints)."""
    card = _card(cfg)
    dtype = _dtype(cfg, card)
    sequences = (
        cfg.micro_batch * cfg.grad_accum if isinstance(cfg.micro_batch, int) else cfg.batch_size
    )
    out = _memory_plan(cfg, card, dtype, sequences)
    out.update(_time(cfg, card, dtype, out["params"], sequences))
    out["fsdp"] = fsdp_rows(cfg, card.budget, card.nominal, dtype, sequences, out["floor_hours"])
    out.update(_disk(cfg))
    return out


def _disk(cfg: PlanConfig) -> dict[str, Any]:
    """What the checkpoints take on out_dir's disk: keep_ckpts of them plus the one being
    written (the oldest is deleted only after the new one is complete)."""
    from model import memory
    from model.checkpoint import estimate_bytes, free_bytes

    w = memory.Workload.from_train(cfg, 1, "float32")  # the shape is all that matters here
    one = estimate_bytes(
        memory.param_count(w), memory.param_tensors(w), memory.optimizer_state_bytes(w)
    )
    return {
        "checkpoint_bytes": one,
        "checkpoints_disk_bytes": (cfg.keep_ckpts + 1) * one,
        "disk_free_bytes": free_bytes(cfg.out_dir),
    }


def _memory_plan(cfg: PlanConfig, card: Card, dtype: str, sequences: int) -> dict[str, Any]:
    """The memory half: the config's micro-batch, the sweep, the largest that fits."""
    from model import memory
    from model.memory_loss import compiled_loss_keeps_logits

    overhead = memory.Overhead.for_card(cfg.compile, card.nominal)
    sizes = _sizes(sequences, cfg.gpus)
    one = memory.Workload.from_train(cfg, 1, dtype, cfg.gpus)
    without = dataclasses.replace(one, checkpoint=False)
    ac, largest = _checkpointing(cfg, card, without, overhead, sizes)
    base = dataclasses.replace(without, checkpoint=ac)
    best = memory.largest_fitting(base, overhead, card.budget, sizes)
    shown_mb = cfg.micro_batch if isinstance(cfg.micro_batch, int) else None
    if shown_mb is None:
        shown_mb = best.workload.micro_batch if best is not None else 1
    shown = memory.estimate(base.with_batch(shown_mb), overhead)
    out: dict[str, Any] = {
        "gpu": card.name or None,
        "gpu_bytes": card.budget,
        "gpu_bytes_nominal": card.nominal,
        "dtype": dtype,
        "compile": cfg.compile,
        "loss": cfg.loss,
        "params": shown.params,
        "micro_batch": shown_mb,
        "sequences_per_step": sequences,
        "parts": shown.parts,
        "cuda_context_bytes": overhead.context,
        "workspace_bytes": overhead.workspace,
        "fragmentation_bytes": shown.fragmentation,
        "peak_train_bytes": shown.peak_train,
        "peak_eval_bytes": shown.peak_eval,
        "eval_after_train_bytes": shown.eval_after_train,
        "eval_largest_tensor_bytes": memory.eval_largest_tensor(shown.workload),
        "required_bytes": shown.required,
        "fits": shown.fits(card.budget),
        "lean_loss_keeps_logits_compiled": compiled_loss_keeps_logits(),
        "max_micro_batch": best.workload.micro_batch if best is not None else 0,
        "grad_accum": sequences // best.workload.micro_batch if best is not None else 0,
        "activation_checkpointing": "full" if ac else "none",
        "activation_checkpointing_key": cfg.activation_checkpointing,
        "max_micro_batch_without_ac": largest[False],
        "max_micro_batch_with_ac": largest[True],
        "sweep": [
            _sweep_row(
                memory.estimate(without.with_batch(m), overhead),
                memory.estimate(
                    dataclasses.replace(without, checkpoint=True, micro_batch=m), overhead
                ),
                card,
            )
            for m in sizes
        ],
    }
    if cfg.exact:
        from model.memtrace import trace_peaks

        train, evals = trace_peaks(shown.workload)
        out["exact"] = {"peak_train_bytes": train, "peak_eval_bytes": evals}
    return out


def _sizes(sequences: int, gpus: int) -> list[int]:
    from model import memory

    sizes = memory.batch_candidates(sequences, gpus)
    if not sizes:
        raise ConfigError(f"{sequences} sequences per step cannot be split over gpus={gpus}")
    return sizes


def _checkpointing(
    cfg: PlanConfig, card: Card, without: Any, overhead: Any, sizes: list[int]
) -> tuple[bool, dict[bool, int]]:
    """(recompute the blocks?, the largest fitting micro-batch without and with): `auto`
    by the trainer's rule (model/autobatch.py) on this card's budget."""
    from model import memory
    from model.autobatch import checkpointing

    if cfg.activation_checkpointing == "auto":
        ac = checkpointing(cfg, without.dtype, card.budget, overhead, sizes, cfg.gpus)
    else:
        ac = cfg.activation_checkpointing == "full"
    largest = {}
    for flag in (False, True):
        w = dataclasses.replace(without, checkpoint=flag)
        e = memory.largest_fitting(w, overhead, card.budget, sizes)
        largest[flag] = e.workload.micro_batch if e is not None else 0
    return ac, largest


def _sweep_row(e: Any, ac: Any, card: Card) -> dict[str, Any]:
    """One micro-batch without activation checkpointing, and its needs with it (`ac_`)."""
    return {
        "micro_batch": e.workload.micro_batch,
        "peak_train_bytes": e.peak_train,
        "peak_eval_bytes": e.peak_eval,
        "required_bytes": e.required,
        "fits": e.fits(card.budget),
        "ac_required_bytes": ac.required,
        "ac_fits": ac.fits(card.budget),
    }


def _time(cfg: PlanConfig, card: Card, dtype: str, params: int, sequences: int) -> dict[str, Any]:
    from model import hardware

    n_non_embedding = params - cfg.block_size * cfg.n_embd  # drop wpe, keep the tied wte
    fpt = hardware.flops_per_token(n_non_embedding, cfg.n_layer, cfg.n_embd, cfg.block_size)
    peak: float | None = cfg.peak_tflops if cfg.peak_tflops > 0 else None
    if peak is None and card.name:
        peak = hardware.peak_tflops(card.name, "float32" if dtype == "float32" else "bfloat16")
    elif peak is None:
        log.warning('no GPU name: pass gpu="NVIDIA ..." or peak_tflops=... for the time floor')
    tokens = cfg.max_iters * sequences * cfg.block_size
    floor = tokens * fpt / (peak * 1e12) / 3600 if peak else None
    out: dict[str, Any] = {
        "flops_per_token": fpt,
        "peak_tflops": peak,
        "tokens_per_step": sequences * cfg.block_size,
        "total_tokens": tokens,
        "floor_hours": floor,
        "mfu_assumed": cfg.mfu,
        "expected_hours": floor / cfg.mfu if floor is not None else None,
        "measured_ms_per_step": None,
        "measured_from": None,
        "eta_hours": None,
    }
    measured = _measured(cfg)
    if measured is not None:
        ms, source, done = measured
        out["measured_ms_per_step"] = ms
        out["measured_from"] = source
        out["eta_hours"] = max(cfg.max_iters - done, 0) * ms / 3.6e6
    return out


def _gib(n: int) -> str:
    return f"{n / 2**30:8.2f}"


def render(cfg: PlanConfig, p: dict[str, Any]) -> str:
    parts = [_memory_lines(cfg, p), _sweep_lines(p)]
    if cfg.parallel == "fsdp" or not p["max_micro_batch"]:  # what sharding over N would give
        parts.append(fsdp_lines(p["fsdp"], p["gpu_bytes"]))
    parts += [time_lines(p), disk_lines(cfg.out_dir, cfg.keep_ckpts, p)]
    return "\n\n".join("\n".join(lines) for lines in parts)


def _memory_lines(cfg: PlanConfig, p: dict[str, Any]) -> list[str]:
    mb, seq = p["micro_batch"], p["sequences_per_step"]
    big = p["eval_largest_tensor_bytes"] / 2**30
    lines = [
        f"plan: {p['gpu'] or 'unnamed GPU'} with {p['gpu_bytes'] / 2**30:.2f} GiB, {p['dtype']}, "
        f"compile {'on' if p['compile'] else 'off'}, {p['loss']} loss",
        f"model: {p['params']:,} parameters ({cfg.n_layer} layers, {cfg.n_head} heads, "
        f"{cfg.n_embd} wide, block {cfg.block_size}, vocab {cfg.vocab_size})",
        "",
        f"{'memory at micro_batch ' + str(mb) + f' (grad_accum {seq // mb})':<58}{'GiB':>8}",
    ]
    lines += [f"  {name:<56}{_gib(v)}" for name, v in p["parts"].items()]
    lines += [
        f"  {'CUDA context' + (' + driver reserve' if p['gpu_bytes_nominal'] else ''):<56}"
        f"{_gib(p['cuda_context_bytes'])}",
        f"  {'cuBLAS' + (' + compile' if p['compile'] else '') + ' workspace':<56}"
        f"{_gib(p['workspace_bytes'])}",
        f"  {'fragmentation reserve (5 % of the train peak)':<56}{_gib(p['fragmentation_bytes'])}",
        f"  {'peak of a training micro-step (tensors)':<56}{_gib(p['peak_train_bytes'])}",
        f"  {'peak of an eval step (tensors)':<56}{_gib(p['peak_eval_bytes'])}",
        f"  {f'eval after training (+ its largest new tensor, {big:.2f})':<56}"
        f"{_gib(p['eval_after_train_bytes'])}",
    ]
    if p["compile"] and p["loss"] == "lean" and p["lean_loss_keeps_logits_compiled"]:
        lines.append("  (under compile the lean loss keeps its chunk logits: docs/plan.md)")
    if "exact" in p:
        ex = p["exact"]
        lines.append(
            f"  {'fake-tensor trace: train / eval peak':<56}"
            f"{_gib(ex['peak_train_bytes'])} /{_gib(ex['peak_eval_bytes'])}"
        )
    verdict = "fits" if p["fits"] else "DOES NOT FIT"
    needed = f"needed of {p['gpu_bytes'] / 2**30:.2f} GiB"
    lines.append(f"  {needed:<56}{_gib(p['required_bytes'])}  {verdict}")
    return lines


def _sweep_lines(p: dict[str, Any]) -> list[str]:
    seq = p["sequences_per_step"]
    lines = [
        f"micro-batches of {seq} sequences per step ({p['tokens_per_step']:,} tokens):",
        f"  {'micro_batch':>11} {'grad_accum':>10} {'train GiB':>10} {'eval GiB':>9} "
        f"{'needed GiB':>11}  fits  {'with AC GiB':>11}  fits",
    ]
    for s in p["sweep"]:
        lines.append(
            f"  {s['micro_batch']:>11} {seq // s['micro_batch']:>10} "
            f"{s['peak_train_bytes'] / 2**30:>10.2f} {s['peak_eval_bytes'] / 2**30:>9.2f} "
            f"{s['required_bytes'] / 2**30:>11.2f}  {'yes' if s['fits'] else 'no ':<4}"
            f"{s['ac_required_bytes'] / 2**30:>13.2f}  {'yes' if s['ac_fits'] else 'no'}"
        )
    key, ac = p["activation_checkpointing_key"], p["activation_checkpointing"]
    lines.append(
        f"activation checkpointing (AC): {key}{f' -> {ac}' if key == 'auto' else ''} "
        f"(largest micro-batch without: {p['max_micro_batch_without_ac'] or 'none'}, "
        f"with: {p['max_micro_batch_with_ac'] or 'none'}; model/autobatch.py's rule)"
    )
    if p["max_micro_batch"]:
        lines.append(
            f"largest micro-batch that fits: {p['max_micro_batch']} "
            f"(grad_accum {p['grad_accum']}, same tokens per step"
            f"{', blocks recomputed' if ac == 'full' else ''})"
        )
    else:
        lines.append(
            "no micro-batch fits on one GPU, even with activation checkpointing: shard it "
            "over several with parallel=fsdp (below), lower block_size or the model size, "
            "or use a bigger GPU"
            if p["max_micro_batch_with_ac"] == 0
            else "no micro-batch fits: set activation_checkpointing=full (or auto)"
        )
    return lines


def run(cfg: PlanConfig) -> int:
    p = build_plan(cfg)
    print(json.dumps(p, indent=1) if cfg.format == "json" else render(cfg, p))
    return 0
