"""The planner under FSDP: each GPU's shards against a real 2-process gloo model's, and
what `make plan` says for a model that no single card holds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model import memory
from model.memory_fsdp import sharded_static

SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=96)


def _local_bytes(rank: int, init: str, out: str, optimizer: str) -> None:
    """One of two gloo ranks: shard a model as the trainer does, step once, write what this
    rank holds (weights, optimizer state) to out/<rank>.json."""
    from model.distributed import DistInfo
    from model.fsdp import shard
    from model.gpt import GPT, GPTConfig
    from model.runtime import Precision

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = GPT(GPTConfig(**SHAPE))  # type: ignore[arg-type]
        info, fp32 = DistInfo(rank, rank, 2), Precision("float32", "cpu")
        shard(model, model.transformer.h, info, torch.device("cpu"), fp32, False)
        opt = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu", optimizer, True)
        x = torch.randint(0, 96, (2, 16))
        _, loss = model(x, x)
        loss.backward()
        grads = sum(4 * p.grad.to_local().numel() for p in model.parameters())
        opt.step()
        weights = sum(4 * p.to_local().numel() for p in model.parameters())
        state = sum(
            t.to_local().numel() * t.element_size() if hasattr(t, "to_local") else t.numel() * 4
            for s in opt.state.values()
            for t in s.values()
            if isinstance(t, torch.Tensor)
        )
        Path(out, f"{rank}.json").write_text(
            json.dumps({"weights": weights, "grads": grads, "state": state})
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_each_gpus_shards_are_the_planners(tmp_path: Path, optimizer: str) -> None:
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(  # type: ignore[no-untyped-call]
        _local_bytes, args=(init, str(tmp_path), optimizer), nprocs=2, start_method="spawn"
    )
    w = memory.Workload(micro_batch=1, optimizer=optimizer, shards=2, **SHAPE)  # type: ignore[arg-type]
    kept, grads = sharded_static(w, memory.param_count(w), memory.optimizer_state_bytes(w))
    for rank in (0, 1):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got["weights"] == kept["weights (fp32), a 1/2 shard"]  # every dim even: exact
        assert got["grads"] == grads["gradients (fp32), a 1/2 shard"]
        states = next(v for k, v in kept.items() if "states" in k)
        assert got["state"] == pytest.approx(states, rel=0.02)  # the step scalars are whole


def test_sharding_divides_the_static_memory_and_keeps_the_activations() -> None:
    w = memory.Workload(micro_batch=4, **SHAPE)  # type: ignore[arg-type]
    whole, two = (
        memory.estimate(w, memory.Overhead(0, 0)),
        memory.estimate(dataclasses.replace(w, shards=2), memory.Overhead(0, 0)),
    )
    P = memory.param_count(w)
    assert whole.parts["weights (fp32)"] == 4 * P
    assert two.parts["weights (fp32), a 1/2 shard"] == 4 * P // 2
    assert two.parts["gradients (fp32), a 1/2 shard"] == 4 * P // 2
    acts = [k for k in whole.parts if k.startswith("activations kept")]
    assert [two.parts[k] for k in acts] == [whole.parts[k] for k in acts]


def test_the_plan_of_774m_on_12_gb_says_how_many_gpus_fsdp_needs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.__main__ import main

    gpu = "gpu=NVIDIA GeForce RTX 4070"
    assert main(["plan", "--config", "configs/gpt2-774m.yaml", "gpu_gb=12", gpu]) == 0
    text = capsys.readouterr().out
    assert "no micro-batch fits on one GPU, even with activation checkpointing" in text
    assert "fewest GPUs that train it: 2 (torchrun --nproc_per_node=2" in text
    args = ["plan", "--config", "configs/gpt2-774m.yaml", "gpu_gb=12", gpu, "format=json"]
    assert main([*args, "parallel=fsdp", "gpus=2"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["fits"] and p["max_micro_batch"] == 16 and p["activation_checkpointing"] == "full"
    assert p["fsdp"][0]["gpus"] == 2 and p["fsdp"][0]["max_micro_batch_with_ac"] == 16
