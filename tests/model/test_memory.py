"""The memory planner (model/memory.py) against what PyTorch really allocates."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
import torch

from model import memory as plan
from model import memory_loss
from model.gpt import GPT
from model.memory import GiB, Overhead, Workload
from model.memtrace import trace_peaks
from tests.bench_fixtures import dry_run
from tests.conftest import Shared

# The accuracy docs/plan.md and the README state, with a little room (measured on
# these shapes: activations within 0.18 % eager and 2.0 % compiled, peaks within 1.1 %).
ACTIVATIONS = 0.005
ACTIVATIONS_COMPILED = 0.025
PEAKS = 0.015

STORY = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
SHAPES = [  # (n_layer, n_head, n_embd, block_size, vocab, micro_batch)
    (1, 2, 64, 32, 256, 2),
    (2, 4, 128, 64, 512, 3),
    (3, 4, 96, 48, 1000, 5),
]


def _workload(shape: tuple[int, ...], **kw: Any) -> Workload:
    L, nh, C, T, V, B = shape
    return Workload(n_layer=L, n_head=nh, n_embd=C, block_size=T, vocab_size=V, micro_batch=B, **kw)


def _model(w: Workload) -> GPT:
    torch.manual_seed(0)
    return GPT(w.gpt_config())


def _saved_bytes(model: Any, w: Workload, params: set[int]) -> int:
    """Bytes of the distinct storages autograd keeps for backward (parameters excluded)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    x = torch.randint(0, w.vocab_size, (w.micro_batch, w.block_size))
    dtype = torch.bfloat16 if w.dtype == "bfloat16" else None
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=dtype, enabled=dtype is not None),
    ):
        _, loss = model(x, x)
    assert loss is not None
    return sum(seen.values())


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_params_and_optimizer_states_exact(optimizer: str) -> None:
    w = dataclasses.replace(_workload(SHAPES[1]), optimizer=optimizer)
    model = _model(w)
    assert model.num_params() == plan.param_count(w)
    assert len(list(model.parameters())) == plan.param_tensors(w)
    assert sum(p.nbytes for p in model.parameters()) == 4 * plan.param_count(w)
    opt = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu", optimizer)
    x = torch.randint(0, w.vocab_size, (2, w.block_size))
    _, loss = model(x, x)
    assert loss is not None
    loss.backward()
    assert sum(
        p.grad.nbytes for p in model.parameters() if p.grad is not None
    ) == 4 * plan.param_count(w)
    opt.step()
    state_bytes = sum(t.nbytes for s in opt.state.values() for t in s.values())
    assert state_bytes == plan.optimizer_state_bytes(w)


def test_param_count_124m() -> None:
    assert plan.param_count(Workload(**STORY, micro_batch=1)) == 124_475_904


def _targets_saved(w: Workload) -> int:
    """The lean and plain losses save the targets (the batch, counted apart in the plan)."""
    return 0 if w.loss == "fused" else 8 * w.tokens


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("loss", ["fused", "lean"])
def test_activations_match_saved_tensors(shape: tuple[int, ...], dtype: str, loss: str) -> None:
    """Estimate vs the storages autograd really keeps (eager), within 0.5 %."""
    w = _workload(shape, dtype=dtype, loss=loss)
    model = _model(w)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    real = _saved_bytes(model, w, params)
    predicted = plan.activation_bytes(w) + _targets_saved(w)
    assert abs(predicted - real) <= ACTIVATIONS * real, (predicted, real)


@pytest.mark.parametrize("loss", ["fused", "lean"])
def test_compiled_model_keeps_what_the_plan_predicts(loss: str) -> None:
    """Under torch.compile (the aot_eager_decomp_partition backend, CPU: the GPU compiler's
    partitioner) the chunked losses stay eager, so no chunk's logits are saved for backward;
    the compile=True estimate must match what the compiled model really keeps."""
    w = _workload((1, 4, 128, 64, 4096, 3), dtype="bfloat16", loss=loss, loss_chunk=64)
    model = _model(w)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    compiled = torch.compile(model, backend="aot_eager_decomp_partition")
    try:
        real = _saved_bytes(compiled, w, params)
    finally:
        torch._dynamo.reset()
    cw = Workload(**{**w.__dict__, "compile": True})
    predicted = plan.activation_bytes(cw) + _targets_saved(w)
    assert abs(predicted - real) <= ACTIVATIONS_COMPILED * real, (predicted, real)
    assert not memory_loss.compiled_loss_keeps_logits()  # model/loss.py excludes it from compile


@pytest.mark.parametrize("shape", SHAPES[:2])
@pytest.mark.parametrize(
    ("loss", "dtype"),
    [("fused", "bfloat16"), ("fused", "float32"), ("lean", "bfloat16"), ("plain", "bfloat16")],
)
def test_peaks_match_fake_tensor_trace(shape: tuple[int, ...], loss: str, dtype: str) -> None:
    w = _workload(shape, dtype=dtype, loss=loss)
    e = plan.estimate(w, Overhead(0, 0))
    train, evals = trace_peaks(w)
    assert abs(e.peak_train - train) <= PEAKS * train, (e.peak_train, train)
    assert abs(e.peak_eval - evals) <= PEAKS * evals, (e.peak_eval, evals)


def test_the_trace_runs_the_workloads_loss() -> None:
    """trace_peaks follows Workload.loss (through GPTConfig.loss): three losses, three peaks."""
    peaks = {
        loss: trace_peaks(_workload(SHAPES[1], loss=loss)) for loss in ("fused", "lean", "plain")
    }
    assert len({train for train, _ in peaks.values()}) == 3
    assert peaks["fused"][0] < peaks["lean"][0]


def test_fused_peak_not_above_lean() -> None:
    """The issue's requirement, for the 124M config in bf16: the fused loss's training peak
    is below the lean loss's (by about 215 MiB at micro-batch 8 and 16) and so is its eval."""
    oh = Overhead.for_card(compile=True, nominal=True)
    for mb in (1, 4, 8, 16, 32):
        lean, fused = (
            plan.estimate(Workload(**STORY, micro_batch=mb, compile=True, loss=loss), oh)
            for loss in ("lean", "fused")
        )
        assert fused.peak_train < lean.peak_train, mb
        assert fused.peak_eval <= lean.peak_eval and fused.required < lean.required, mb
    w8 = Workload(**STORY, micro_batch=8, loss="fused")
    # what it keeps: dL/dh (N, C) fp32 + dL/dW (V, C) fp32 + n_valid; no hidden state
    assert plan.loss_kept_bytes(w8) == 4 * 8192 * 768 + 4 * 50304 * 768 + 8
    assert (
        memory_loss.loss_backward_bytes(w8) == 0 < memory_loss.loss_forward_bytes(w8) < 300 * 2**20
    )


def test_monotonic_in_micro_batch_and_block_size() -> None:
    oh = Overhead.for_card(compile=True, nominal=True)
    for loss in ("fused", "lean", "plain"):
        base = Workload(**{**STORY, "block_size": 256}, micro_batch=1, loss=loss)
        by_batch = [plan.estimate(base.with_batch(b), oh) for b in (1, 2, 4, 8, 16, 32)]
        for a, b in itertools.pairwise(by_batch):
            assert a.peak_train < b.peak_train and a.peak_eval <= b.peak_eval
            assert a.required < b.required
        by_block = [
            plan.estimate(Workload(**{**STORY, "block_size": t}, micro_batch=4, loss=loss), oh)
            for t in (128, 256, 512, 1024)
        ]
        for a, b in itertools.pairwise(by_block):
            assert a.required < b.required


def test_story_12_gb_card() -> None:
    """The story: 124M on a 12 GB RTX 4070. Micro-batch 4 fits; 8 with the full-logits loss
    does not (10.37 GB in use, 1.54 GB more wanted in the eval); the lean loss fits 8 and 16."""
    oh = Overhead.for_card(compile=True, nominal=True)
    budget = 12 * GiB

    def est(mb: int, loss: str) -> plan.Estimate:
        return plan.estimate(Workload(**STORY, micro_batch=mb, compile=True, loss=loss), oh)

    assert est(4, "plain").fits(budget)
    plain8 = est(8, "plain")
    assert not plain8.fits(budget)
    assert plan.eval_largest_tensor(plain8.workload) / GiB == pytest.approx(1.535, abs=0.01)
    assert 9.5 * GiB < plain8.peak_train + plain8.fragmentation + oh.context < 11 * GiB
    for loss in ("lean", "fused"):
        assert est(8, loss).fits(budget)
        best = plan.largest_fitting(est(1, loss).workload, oh, budget, plan.batch_candidates(32))
        assert best is not None and best.workload.micro_batch == 16
    assert plan.largest_fitting(est(1, "plain").workload, oh, budget, [1, 2, 4, 8]) is not None


def test_batch_candidates_respect_world_size() -> None:
    assert plan.batch_candidates(32) == [1, 2, 4, 8, 16, 32]
    assert plan.batch_candidates(32, 4) == [1, 2, 4, 8]  # grad_accum 32..4, divisible by 4
    assert plan.batch_candidates(6, 4) == []


@pytest.mark.slow
def test_gpu_memory_bench_dry_run_on_cpu(shared: Shared) -> None:
    """bench/memory_gpu.py --tiny runs both parts on the CPU and prints its tables: the GPU
    session's dry run (part 1, made once) runs it with these arguments (`--tiny
    --micro-batches 4 --compile off --steps 1`) and returns them as memory.md."""
    ran = dry_run(shared, "1")
    assert (ran / "rc").read_text().startswith("0\n"), (ran / "rc").read_text()
    out = (ran / "out" / "memory.md").read_text()
    assert "### A. Predicted vs measured peak (MiB)" in out and "### B. The story" in out
    rows = [line for line in out.splitlines() if line.startswith("| 4 | off |")]
    assert len(rows) == 1
    error = float(rows[0].split("|")[5].strip().rstrip("%"))
    assert abs(error) < 10  # the prediction against the fake-tensor trace
    assert "| lean | 32 | 1 | fits | ran |" in out and "| fused | 32 | 1 | fits | ran |" in out


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["fused", "lean"])
def test_checkpointed_estimate_matches_the_trace_and_saves_memory(loss: str) -> None:
    """Activation checkpointing in the plan: within 10 % of what the real model allocates
    (fake tensors), and below the plan without it by most of the blocks' activations."""
    shape = dict(n_layer=6, n_head=4, n_embd=128, block_size=256, vocab_size=2048)
    w = plan.Workload(**shape, micro_batch=4, loss=loss, checkpoint=True)  # type: ignore[arg-type]
    e = plan.estimate(w, plan.Overhead(0, 0))
    train, _ = trace_peaks(w)
    assert abs(e.peak_train / train - 1) < 0.10, (e.peak_train, train)
    plain = plan.estimate(dataclasses.replace(w, checkpoint=False), plan.Overhead(0, 0))
    saved = plain.peak_train - e.peak_train
    assert saved > 0.5 * (w.n_layer - 1) * plan.layer_activation_bytes(w), saved
