"""`micro_batch: auto`: the largest micro-batch that fits, proposed by the planner, proven by a trial.

The run keeps `batch_size` sequences per optimizer step (all ranks), so
`micro_batch x grad_accum = batch_size`, with grad_accum divisible by the
number of processes (each rank runs grad_accum / world_size micro-steps,
model/distributed.py). On a GPU the planner (model/memory.py) proposes the
largest such micro-batch whose estimate fits the free memory; then a real
trial at that size on the real model with the run's dtype and compile
setting confirms it, stepping down a size on torch.cuda.OutOfMemoryError.
The trial reaches training's peak: a first optimizer step makes the
optimizer state, and a second step's last backward runs with that state and
(when the run accumulates) the previous micro-step's gradients present; an
eval forward follows. After an out-of-memory nothing of the attempt stays
reachable when the cache is emptied. Under DDP every rank runs the trial and
all take the smallest size any rank found. Once the size is resolved the
CUDA peak memory statistics are reset, so the run's logged peak is its own.

On the CPU there is no device memory to fit: the rule is the largest
divisor of batch_size (that keeps grad_accum divisible by the world size) up
to CPU_MICRO_BATCH, and a log line says so.

`activation_checkpointing: auto` is resolved here too (`checkpointing`): the
blocks are recomputed only where, without it, the largest micro-batch that
fits holds fewer than MIN_TOKENS tokens (or none fits) and with it a larger
one does. Why this rule: recomputing costs the
blocks' forward again, about a third more compute a step at any
micro-batch, while a larger micro-batch helps only until the matmuls are
big enough to keep the GPU busy; below 8 K tokens (8 sequences of 1024) a
GPT-2 block's matmuls leave a modern GPU partly idle, above it the gain is
small against a third. So the 124M model on a 12 GB card (16 fit) runs
without, the 350M one (4 fit without, 16 with) with. The constant is a
planner's judgement until bench/scale_gpu.py measures it. On the CPU `auto`
is `none`.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from typing import Any

import torch

from model import distributed, memory, optim
from model.dataset import resolve_tokenizer
from model.errors import ConfigError, ResourceError
from model.gpt import GPT, GPTConfig
from model.runtime import maybe_compile, replace, resolve_precision
from model.train_config import TrainConfig

log = logging.getLogger(__name__)

CPU_MICRO_BATCH = 8  # CPU rule: the largest candidate micro-batch not above this
MIN_TOKENS = 8192  # activation_checkpointing auto: recompute only below this micro-batch


def candidates(cfg: TrainConfig, world_size: int) -> list[int]:
    found = memory.batch_candidates(cfg.batch_size, world_size)
    if not found:
        raise ConfigError(
            f"batch_size={cfg.batch_size} cannot be split over {world_size} processes; "
            f"set batch_size to a multiple of {world_size}"
        )
    return found


def workload(
    cfg: TrainConfig, micro_batch: int, dtype: str, gpus: int | None = None
) -> memory.Workload:
    """On one GPU, sharded over `gpus` (default: the run's processes) under `parallel: fsdp`."""
    gpus = distributed.from_env().world_size if gpus is None else gpus
    return memory.Workload.from_train(cfg, micro_batch, dtype, gpus)


def _with_batch(cfg: TrainConfig, micro_batch: int) -> TrainConfig:
    return replace(cfg, micro_batch=micro_batch, grad_accum=cfg.batch_size // micro_batch)


def trial(cfg: TrainConfig, device: torch.device, micro_batch: int, world_size: int = 1) -> bool:
    """Training's peak and an eval step at `micro_batch` on `device`; False on out-of-memory."""
    micro_steps = min(2, distributed.per_rank_accum(cfg.grad_accum, world_size))
    try:
        _two_steps_and_eval(cfg, device, micro_batch, micro_steps)
        ok = True
    except torch.cuda.OutOfMemoryError:
        ok = False
    # Past the except clause Python has dropped the exception and its traceback, whose
    # frames held the attempt's model, optimizer, batch, loss and autograd graph: now
    # nothing of it is reachable, and the cache can hand all its blocks back.
    _release()
    return ok


def _two_steps_and_eval(
    cfg: TrainConfig, device: torch.device, micro_batch: int, micro_steps: int
) -> None:
    """What training holds at its peak, then an eval forward, on a random batch.

    Step 1 creates the optimizer state (AdamW's two fp32 moments, Muon's momentum:
    made at the first step), so step 2 runs with it. Step 2 has `micro_steps`
    micro-steps (2 when the run accumulates), so its last backward runs with the
    previous one's fp32 gradients allocated: about 12 bytes a parameter that a single
    fresh step never holds. The eval forward follows with the state kept and the
    gradients freed, as in the run.
    """
    precision = resolve_precision(cfg, device)
    model = GPT(GPTConfig.from_train(cfg)).to(device)
    optimizer = model.configure_optimizer(
        cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), device.type, cfg.optimizer
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision.uses_scaler)
    compiled: Any = maybe_compile(model, cfg, device)
    x = torch.randint(0, cfg.vocab_size, (micro_batch, cfg.block_size), device=device)
    for accum in (1, micro_steps):
        for _ in range(accum):
            with precision.autocast():
                _, loss = compiled(x, x)
            scaler.scale(loss / accum).backward()
        for opt in optim.parts(optimizer):
            scaler.step(opt)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad(), precision.autocast():
        compiled(x, x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # an out-of-memory in a queued kernel surfaces here


def _release() -> None:
    """Free what a finished trial left (its reference cycles too) and give the cached
    blocks back to the driver, before the next size or the run. Only when nothing of
    the trial is reachable any more: a block a live tensor holds stays in the cache."""
    gc.collect()
    torch.cuda.empty_cache()  # a no-op where CUDA was never initialised (the CPU)


def resolve_micro_batch(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """A copy of `cfg` with an int micro_batch and grad_accum = batch_size / micro_batch."""
    info = distributed.from_env()
    world = info.world_size
    sizes = candidates(cfg, world)
    if device.type != "cuda":
        mb = max(m for m in sizes if m <= CPU_MICRO_BATCH)
        log.info(
            "micro_batch auto does nothing on %s (no GPU memory to fit): micro_batch %d, "
            "grad_accum %d (the largest divisor of batch_size=%d up to %d)",
            device,
            mb,
            cfg.batch_size // mb,
            cfg.batch_size,
            CPU_MICRO_BATCH,
        )
        return _with_batch(cfg, mb)
    dtype, budget, overhead = _gpu_budget(cfg, device)
    proposed = memory.largest_fitting(workload(cfg, 1, dtype), overhead, budget, sizes)
    start = proposed.workload.micro_batch if proposed is not None else min(sizes)
    log.info(
        "planner: micro_batch %d fits %.2f GiB free (estimate %.2f GiB); trying it",
        start,
        budget / memory.GiB,
        memory.estimate(workload(cfg, start, dtype), overhead).required / memory.GiB,
    )
    if cfg.parallel == "fsdp" and world > 1:  # a trial would need the sharded model
        log.info("micro_batch auto under FSDP: the planner's %d, without a trial", start)
        return _with_batch(cfg, distributed.min_over_ranks(start, info, device))
    for mb in sorted((m for m in sizes if m <= start), reverse=True):
        if trial(_with_batch(cfg, mb), device, mb, world):
            chosen = distributed.min_over_ranks(mb, info, device)  # all ranks run one size
            log.info("micro_batch auto: trial at %d ran; using %d", mb, chosen)
            return _with_batch(cfg, chosen)
        log.warning("micro_batch %d ran out of GPU memory in the trial; trying smaller", mb)
    raise ResourceError(
        f"even micro_batch {min(sizes)} runs out of GPU memory on {torch.cuda.get_device_name(device)}; "
        "lower block_size or the model size, or free the GPU"
    )


def _gpu_budget(cfg: TrainConfig, device: torch.device) -> tuple[str, int, memory.Overhead]:
    """(dtype, bytes the run may use, overhead beyond the tensors) on this GPU now."""
    dtype = resolve_precision(cfg, device).name
    free, _total = torch.cuda.mem_get_info(device)
    budget = free + torch.cuda.memory_reserved(device)  # the context exists already: not counted
    overhead = memory.Overhead(0, memory.Overhead.for_card(cfg.compile, nominal=False).workspace)
    return dtype, budget, overhead


def checkpointing(
    cfg: TrainConfig,
    dtype: str,
    budget: int,
    overhead: memory.Overhead,
    sizes: list[int],
    gpus: int | None = None,
) -> bool:
    """The `auto` rule (module docstring): recompute the blocks or not, for this budget.

    With an int micro_batch: only if it does not fit without recomputing and does with.
    """
    base = dataclasses.replace(workload(cfg, 1, dtype, gpus), checkpoint=False)
    if isinstance(cfg.micro_batch, int):
        w = base.with_batch(cfg.micro_batch)
        fits = memory.estimate(w, overhead).fits(budget)
        return not fits and memory.estimate(dataclasses.replace(w, checkpoint=True), overhead).fits(
            budget
        )
    plain = memory.largest_fitting(base, overhead, budget, sizes)
    if plain is not None and (
        plain.workload.tokens >= MIN_TOKENS or plain.workload.micro_batch == max(sizes)
    ):
        return False
    ac = memory.largest_fitting(dataclasses.replace(base, checkpoint=True), overhead, budget, sizes)
    return ac is not None and (
        plain is None or ac.workload.micro_batch > plain.workload.micro_batch
    )


def resolve_checkpointing(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """A copy of `cfg` with activation_checkpointing none or full (auto resolved)."""
    if cfg.activation_checkpointing != "auto":
        return cfg
    full = False
    if device.type == "cuda":
        dtype, budget, overhead = _gpu_budget(cfg, device)
        full = checkpointing(
            cfg, dtype, budget, overhead, candidates(cfg, distributed.from_env().world_size)
        )
    log.info(
        "activation_checkpointing auto -> %s%s",
        "full" if full else "none",
        "" if device.type == "cuda" else f" (no GPU memory to fit on {device})",
    )
    return replace(cfg, activation_checkpointing="full" if full else "none")


def resolve_config(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """The config a run actually uses: `tokenizer: auto`, `activation_checkpointing: auto`
    and `micro_batch: auto` replaced by what they resolve to.

    The one place where the smoke stage and training resolve it, before any
    loader is built, so that both see the same micro-batch and accumulation.
    On a GPU it also starts the peak memory count afresh: the trials' peaks are
    no part of the run's `peak_mem_gb` (model/metrics.py).
    """
    cfg = resolve_tokenizer(cfg)  # the shards' tokenizer, recorded in every checkpoint
    cfg = resolve_checkpointing(cfg, device)  # first: it changes what fits
    if cfg.micro_batch == "auto":
        resolved = resolve_micro_batch(cfg, device)
        log.info(
            "micro_batch auto -> %s (grad_accum %d)", resolved.micro_batch, resolved.grad_accum
        )
        cfg = resolved
    assert isinstance(cfg.micro_batch, int)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return cfg
