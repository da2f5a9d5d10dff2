"""`micro_batch: auto` (model/autobatch.py): the CPU rule, world sizes, the run's config.yaml,
and the trial (run on the CPU: what it holds at its last backward, what it frees)."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_post_hook

from model.autobatch import resolve_config, resolve_micro_batch, trial
from model.errors import ConfigError
from model.gpt import GPT
from model.metrics import peak_mem_gb
from model.runtime import replace
from pipeline.train import train
from tests.conftest import REPO
from tests.model.train_fixtures import tiny_config

CPU = torch.device("cpu")


def test_cpu_says_it_does_nothing_and_gives_a_valid_config(
    shards: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_config(shards, tmp_path, micro_batch="auto", batch_size=32)
    with caplog.at_level(logging.INFO, logger="model.autobatch"):
        out = resolve_micro_batch(cfg, CPU)
    assert (out.micro_batch, out.grad_accum) == (8, 4)  # the largest divisor of 32 up to 8
    assert out.micro_batch * out.grad_accum == cfg.batch_size
    assert "does nothing on cpu" in caplog.text and "micro_batch 8" in caplog.text
    assert cfg.micro_batch == "auto"  # a copy, the input is untouched


@pytest.mark.parametrize(
    ("batch_size", "world", "expected"),
    [(12, 1, (6, 2)), (5, 1, (5, 1)), (24, 4, (6, 4)), (32, 8, (4, 8)), (64, 1, (8, 8))],
)
def test_cpu_rule_keeps_grad_accum_divisible_by_world_size(
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    batch_size: int,
    world: int,
    expected: tuple[int, int],
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world))
    cfg = tiny_config(shards, tmp_path, micro_batch="auto", batch_size=batch_size)
    out = resolve_micro_batch(cfg, CPU)
    assert (out.micro_batch, out.grad_accum) == expected
    assert out.grad_accum % world == 0


def test_batch_size_that_cannot_be_split_over_the_ranks_is_a_config_error(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    cfg = tiny_config(shards, tmp_path, micro_batch="auto", batch_size=6)
    with pytest.raises(ConfigError, match="batch_size=6"):
        resolve_config(cfg, CPU)


def test_resolved_size_goes_into_the_run_config(shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(shards, run, micro_batch="auto", batch_size=6, max_iters=2, eval_iters=1)
    assert train(cfg) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert (saved["micro_batch"], saved["grad_accum"], saved["batch_size"]) == (6, 1, 6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_trial_confirms_a_fitting_size(shards: Path, tmp_path: Path) -> None:
    cfg = tiny_config(shards, tmp_path, micro_batch="auto", batch_size=16, device="cuda")
    out = resolve_micro_batch(cfg, torch.device("cuda"))
    assert out.micro_batch == 16 and out.grad_accum == 1  # a tiny model fits any GPU


@contextmanager
def on_train_forward(fn: Callable[[GPT, torch.Tensor, torch.Tensor], None]) -> Iterator[None]:
    """Call fn(model, x, loss) after every forward of a GPT that builds a graph (any GPT:
    the trial makes its own)."""

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if isinstance(module, GPT) and torch.is_grad_enabled():
            fn(module, args[0], output[1])

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_trial_backward_runs_with_the_optimizer_state_and_the_gradients_present(
    shards: Path, tmp_path: Path, optimizer: str
) -> None:
    """Training's peak is a backward with the optimizer state made and, when it
    accumulates, the previous micro-step's gradients allocated: the trial must reach it."""
    cfg = tiny_config(shards, tmp_path, micro_batch=4, grad_accum=2, optimizer=optimizer)
    stepped: list[torch.optim.Optimizer] = []
    seen: list[tuple[bool, bool]] = []  # per backward: (state of every parameter, every grad)

    def at_backward(model: GPT, x: torch.Tensor, loss: torch.Tensor) -> None:
        params = list(model.parameters())

        def probe(grad: torch.Tensor) -> None:  # runs as this backward starts
            states = {p for opt in stepped for p, st in opt.state.items() if st}
            seen.append((all(p in states for p in params), all(p.grad is not None for p in params)))

        loss.register_hook(probe)

    step_hook = register_optimizer_step_post_hook(lambda opt, args, kwargs: stepped.append(opt))
    try:
        with on_train_forward(at_backward):
            assert trial(cfg, CPU, 4) is True
    finally:
        step_hook.remove()
    assert len(seen) == 3  # step 1's backward, then step 2's two micro-steps'
    assert seen[0] == (False, False)  # the first backward: a fresh model, as in the run
    assert seen[-1] == (True, True)  # the last: the state and the gradients already there


def test_an_out_of_memory_in_backward_leaves_nothing_alive_when_the_cache_is_emptied(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(shards, tmp_path, micro_batch=4, grad_accum=2)
    attempt: list[weakref.ref[Any]] = []  # the model, its input and its loss
    alive_at_empty_cache: list[list[bool]] = []

    def out_of_memory(grad: torch.Tensor) -> None:  # the allocator failing in backward
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def at_backward(model: GPT, x: torch.Tensor, loss: torch.Tensor) -> None:
        attempt.extend(weakref.ref(t) for t in (model, x, loss))
        loss.register_hook(out_of_memory)

    empty_cache = torch.cuda.empty_cache

    def observed_empty_cache() -> None:
        alive_at_empty_cache.append([ref() is not None for ref in attempt])
        empty_cache()

    monkeypatch.setattr(torch.cuda, "empty_cache", observed_empty_cache)
    with on_train_forward(at_backward):
        assert trial(cfg, CPU, 4) is False
    assert alive_at_empty_cache == [[False, False, False]]


class PeakStandIn:
    """torch.cuda's peak allocation counter, for a CPU test: the highest allocation
    since the last reset, which a reset brings down to what is allocated now."""

    def __init__(self, allocated: int, peak: int) -> None:
        self.allocated, self.peak = allocated, peak

    def reset_peak_memory_stats(self, device: object = None) -> None:
        self.peak = self.allocated

    def max_memory_allocated(self, device: object = None) -> int:
        return self.peak


def test_the_runs_peak_memory_starts_after_micro_batch_is_resolved(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """resolve_config, which smoke and train both call after the trials and before the
    model is built, resets the peak: the logged peak_mem_gb is not the trials'."""
    stats = PeakStandIn(allocated=0, peak=3 * 2**30)  # the trials reached 3 GiB, all freed
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", stats.reset_peak_memory_stats)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", stats.max_memory_allocated)
    gpu = torch.device("cuda", 0)
    cfg = tiny_config(shards, tmp_path, micro_batch=4, device="cuda")
    resolve_config(replace(cfg, activation_checkpointing="none"), gpu)  # nothing to fit
    assert peak_mem_gb(gpu) == 0.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_peak_after_the_trials_is_only_what_is_still_allocated(
    shards: Path, tmp_path: Path
) -> None:
    gpu = torch.device("cuda")
    cfg = tiny_config(shards, tmp_path, micro_batch="auto", batch_size=16, device="cuda")
    resolve_config(cfg, gpu)  # runs a trial: a model, AdamW, two steps and an eval on the GPU
    assert torch.cuda.max_memory_allocated(gpu) == torch.cuda.memory_allocated(gpu)


def _card(gib: float) -> tuple[int, Any]:
    from model import memory

    budget = int(gib * 2**30) - memory.DRIVER_RESERVE
    return budget, memory.Overhead(0, memory.Overhead.for_card(True, nominal=False).workspace)


@pytest.mark.parametrize(
    ("config", "gib", "micro_batch", "expected"),
    [
        ("gpt2-124m", 12, "auto", False),  # 16 fit without: recomputing would cost a third
        ("gpt2-350m", 12, "auto", True),  # 4 fit without (under 8 K tokens), 32 with
        ("gpt2-350m", 24, "auto", False),  # 16 fit without
        ("gpt2-350m", 12, 8, True),  # a fixed 8 fits only with
        ("gpt2-350m", 12, 4, False),  # a fixed 4 fits without
    ],
)
def test_activation_checkpointing_auto_recomputes_only_where_too_small_a_batch_fits(
    config: str, gib: float, micro_batch: Any, expected: bool
) -> None:
    from model import memory
    from model.autobatch import MIN_TOKENS, candidates, checkpointing
    from model.config import load
    from model.train_config import TrainConfig

    cfg = load(TrainConfig, REPO / "configs" / f"{config}.yaml", [f"micro_batch={micro_batch}"])
    budget, overhead = _card(gib)
    assert checkpointing(cfg, "bfloat16", budget, overhead, candidates(cfg, 1)) is expected
    if micro_batch == "auto" and expected:  # the rule's reason holds in the planner's numbers
        w = memory.Workload.from_train(cfg, 1, "bfloat16")
        best = memory.largest_fitting(w, overhead, budget, candidates(cfg, 1))
        assert best is None or best.workload.tokens < MIN_TOKENS


def test_activation_checkpointing_auto_is_none_on_the_cpu_and_full_builds_a_recomputing_model(
    shards: Path, tmp_path: Path
) -> None:
    from model.trainer import Trainer

    cpu = torch.device("cpu")
    auto = resolve_config(tiny_config(shards, tmp_path / "a"), cpu)
    assert auto.activation_checkpointing == "none"
    full = resolve_config(tiny_config(shards, tmp_path / "f", activation_checkpointing="full"), cpu)
    assert full.activation_checkpointing == "full"
    losses = []
    for cfg in (auto, full):
        trainer = Trainer(cfg, cpu, Path(cfg.out_dir))
        assert trainer.raw_model.cfg.checkpoint_blocks is (cfg is full)
        losses.append([trainer.train_step(1e-3).loss for _ in range(3)])
    assert losses[0] == losses[1]  # the same steps: recomputing is exact on the CPU
