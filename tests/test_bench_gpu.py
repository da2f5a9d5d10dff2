"""The GPU benches' fixes that the CPU can show (issue 21): the micro-batch the race
picks, how a stretch of steps is timed and where its peak is read, the plain loop's
loss inside its forward, and docstrings that name what a lent machine has."""

from __future__ import annotations

import argparse
import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench import train_gpu
from bench.train_bench import NanoForward, PlainLoop, build, run_alone, shard_folder
from model import memory
from model.config import load
from model.train_config import TrainConfig
from tests.conftest import REPO

GiB = 2**30


def _gpt2_cfg() -> TrainConfig:
    args = argparse.Namespace(micro_batch=16, steps=200, eval_iters=10, tiny=False)
    over = [o for o in train_gpu.overrides(args) if not o.startswith("compile")]
    return load(TrainConfig, train_gpu.CONFIG, [*over, "compile=true", "device=cpu"])


def test_auto_micro_batch_is_16_on_a_big_card_and_smaller_where_16_would_run_out() -> None:
    cfg = _gpt2_cfg()
    assert train_gpu.pick_micro_batch(cfg, 139 * GiB, "bfloat16") == 16
    # the plain loop at 16 does not fit what a 12 GB card leaves torch: the old default died
    card = 12 * GiB - memory.DRIVER_RESERVE
    overhead = memory.Overhead.for_card(True, nominal=False)
    plain = train_gpu.replace(cfg, loss="plain")
    at_16 = memory.estimate(memory.Workload.from_train(plain, 16, "bfloat16"), overhead)
    assert not at_16.fits(card)
    mb = train_gpu.pick_micro_batch(cfg, card, "bfloat16")
    assert 1 <= mb < 16
    picked = memory.estimate(memory.Workload.from_train(plain, mb, "bfloat16"), overhead)
    assert picked.fits(card)
    bigger = train_gpu.MICRO_BATCHES[train_gpu.MICRO_BATCHES.index(mb) - 1]
    assert not memory.estimate(
        memory.Workload.from_train(plain, bigger, "bfloat16"), overhead
    ).fits(card)


@pytest.fixture(scope="module")
def tiny_loop(tmp_path_factory: pytest.TempPathFactory) -> PlainLoop:
    tmp = tmp_path_factory.mktemp("gpu-bench")
    args = argparse.Namespace(micro_batch=4, steps=5, eval_iters=2, tiny=True)
    base = load(TrainConfig, train_gpu.CONFIG, [*train_gpu.overrides(args), "device=cpu"])
    data, _ = shard_folder(base, tmp / "shards", tiny=True)
    loop = build("plain", data, tmp / "run", train_gpu.overrides(args), train_gpu.CONFIG)
    assert isinstance(loop, PlainLoop)
    return loop


def test_a_stretch_ends_with_a_sync_whose_wait_counts_and_evals_are_wrapped(
    tiny_loop: PlainLoop,
) -> None:
    events: list[str] = []

    def sync() -> None:  # a GPU still busy with the queued steps: 50 ms to wait
        events.append("sync")
        time.sleep(0.05)

    @contextlib.contextmanager
    def around_eval() -> Iterator[None]:
        events.append("eval")
        yield
        events.append("/eval")

    curve = run_alone(tiny_loop, 5, 2, warmup=1, sync=sync, around_eval=around_eval)
    # step 0 is a warm-up (synced alone); stretches end after steps 2, 4 and 5
    evals = ["eval", "/eval"]
    assert events == [*evals, "sync", "sync", *evals, "sync", *evals, "sync", *evals]
    assert [s for s, _ in curve.evals] == [0, 2, 4, 5]
    assert len(curve.ms) == 5
    for last in (0, 1, 3, 4):  # the warm-up step and the last step of each stretch
        assert curve.ms[last] >= 50, curve.ms
    assert curve.ms[2] < 50, curve.ms  # a step inside a stretch does not wait


def test_the_train_peak_is_read_before_each_eval_and_reset_after_it() -> None:
    """On the CPU there is no allocator: the tracker must then neither read nor fail."""
    peaks = train_gpu.TrainPeak(torch.device("cpu"))
    with peaks.around_eval():
        pass
    assert peaks.peak == 0


def test_the_plain_loop_computes_its_loss_inside_the_forward_it_compiles(
    tiny_loop: PlainLoop,
) -> None:
    assert isinstance(tiny_loop.forward, NanoForward)  # what torch.compile wraps on a GPU
    x, y = tiny_loop.loader.next_batch()
    y = y.clone()
    y[:, :3] = -1  # FIM's padding targets are ignored, as nanoGPT's ignore_index=-1
    loss = tiny_loop.forward(x, y)
    logits, _ = tiny_loop.model(x)
    keep = y.view(-1) != -1
    ref = F.cross_entropy(logits.view(-1, logits.size(-1))[keep], y.view(-1)[keep])
    assert loss.dim() == 0 and torch.allclose(loss, ref)


def test_gpu_docstrings_name_only_what_a_lent_machine_has() -> None:
    """A lent machine has python3 and no .venv, and only $OUT comes back from it."""
    for script in sorted((REPO / "bench").glob("*_gpu.py")):
        text = script.read_text()
        doc = text[: text.index('"""', 3)]
        assert ".venv/bin/python" not in doc, script.name
        assert not re.search(r"--out\s+docs/", doc), script.name
        assert "gpu_session.sh" in doc, script.name


def test_scale_gpu_dry_run_plans_and_traces_both_ways_of_the_blocks(tmp_path: Path) -> None:
    """bench/scale_gpu.py --tiny: with and without activation checkpointing, the plan
    against the real model's trace within 10 %, and recomputing keeps less."""
    import json
    import subprocess
    import sys

    out = tmp_path / "scale.json"
    cmd = [sys.executable, "bench/scale_gpu.py", "--tiny", "--micro-batches", "4", "--steps", "1"]
    done = subprocess.run(
        [*cmd, "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["ac"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {False, True}
    for r in rows.values():
        assert abs(r["error"]) < 0.10 and r["tokens_per_s"] > 0
    assert rows[True]["measured"] < rows[False]["measured"]
    assert rows[True]["predicted"] < rows[False]["predicted"]
