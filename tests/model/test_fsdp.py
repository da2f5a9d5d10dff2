"""FSDP2 (`parallel: fsdp`): sharded Muon, DCP checkpoints, 2 gloo processes against one,
a SIGKILL and rerun, and a resume with another process count."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from model.checkpoint import MODEL, list_checkpoints, load_for_inference, load_latest
from model.config import build
from model.distributed import DistInfo
from model.errors import ConfigError, StateError
from model.fsdp import shard
from model.gpt import GPT, GPTConfig
from model.metrics import read_metrics
from model.muon_sharded import ShardedMuon
from model.runtime import Precision
from model.train_config import TrainConfig
from pipeline.train import train
from tests.conftest import REPO
from tests.model.train_fixtures import (
    kill_after_first_checkpoint,
    tiny_values,
    write_config_yaml,
    write_tiny_shards,
)

TIMING = ("ms", "tokens_per_s")
ENV = {"CODEGPT_SKIP_SMOKE_CHECK": "1", "CODEGPT_LOG": "WARNING", "OMP_NUM_THREADS": "1"}


def test_sharded_muon_on_whole_tensors_is_torch_muon_bitwise() -> None:
    """Its momentum, Newton-Schulz, weight decay and scaled step are torch's own."""
    torch.manual_seed(0)
    weights = [torch.randn(48, 32), torch.randn(32, 128)]
    twins = [w.clone() for w in weights]
    kw: dict[str, Any] = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    ours, theirs = ShardedMuon(weights, **kw), torch.optim.Muon(twins, **kw)
    for _ in range(3):
        for w, t in zip(weights, twins, strict=True):
            g = torch.randn_like(w)
            w.grad, t.grad = g, g.clone()
        ours.step()
        theirs.step()
    for w, t in zip(weights, twins, strict=True):
        assert torch.equal(w, t)
        assert torch.equal(ours.state[w]["momentum_buffer"], theirs.state[t]["momentum_buffer"])


def test_fsdp_refuses_float16() -> None:
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=16))
    with pytest.raises(ConfigError, match="parallel=fsdp does not run in float16"):
        cpu, fp16 = torch.device("cpu"), Precision("float16", "cpu")
        shard(model, model.transformer.h, DistInfo(), cpu, fp16, False)


def _torchrun(
    config: Path, launcher: str = "torch.distributed.run", **popen: Any
) -> subprocess.Popen[str]:
    """torchrun (or the launcher `make train NPROC=2` uses, pipeline.launch) of 2 workers."""
    cmd = [sys.executable, "-m", launcher, "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "pipeline", "train", "--config", str(config)]
    env = {**os.environ, **ENV}
    return subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stderr=subprocess.PIPE, **popen)


def _run2(config: Path) -> None:
    proc = _torchrun(config)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def _running(p: psutil.Process) -> bool:
    """Alive: a killed orphan stays a zombie until init reaps it, which may take its time."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run) if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_fsdp_processes_match_one_and_resume_with_one(tmp_path: Path, optimizer: str) -> None:
    data = write_tiny_shards(tmp_path / "shards")
    common: dict[str, Any] = dict(
        max_iters=6, grad_accum=4, eval_interval=3, ckpt_interval=3, log_interval=1
    )
    common["optimizer"] = optimizer
    two = tiny_values(data, tmp_path / "two", parallel="fsdp", **common)
    _run2(write_config_yaml(tmp_path / "two.yaml", two))
    assert train(build(TrainConfig, tiny_values(data, tmp_path / "one", **common))) == 0

    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-4)
    ckpt = list_checkpoints(tmp_path / "two")[-1]
    assert ckpt.name == "ckpt-00000006.dcp"
    assert sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    whole, _ = load_latest(tmp_path / "two") or ({}, None)  # one process reads it whole
    ref, _ = load_latest(tmp_path / "one") or ({}, None)
    assert whole[MODEL].keys() == ref[MODEL].keys()
    for name, t in ref[MODEL].items():  # Muon's bf16 Newton-Schulz: see test_distributed
        torch.testing.assert_close(whole[MODEL][name], t, rtol=1e-4, atol=2e-3)
    model, cfg, step = load_for_inference(ckpt)  # sample, eval, export and serve
    assert step == 6 and cfg.parallel == "fsdp"
    assert torch.equal(model.state_dict()["lm_head.weight"], whole[MODEL]["lm_head.weight"])

    # the 2-process run goes on in 1 process (DCP reshards), as the 1-process run does
    more = dict(common, max_iters=9)
    assert (
        train(build(TrainConfig, tiny_values(data, tmp_path / "two", parallel="fsdp", **more))) == 0
    )
    assert train(build(TrainConfig, tiny_values(data, tmp_path / "one", **more))) == 0
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-4)
    # a run resumes only the kind of checkpoint its `parallel` writes
    with pytest.raises(StateError, match=r"written with parallel=fsdp \(a DCP folder\)"):
        train(build(TrainConfig, tiny_values(data, tmp_path / "two", **dict(more, max_iters=12))))


def _kill_values(data: Path, out_dir: Path, parallel: str) -> dict[str, Any]:
    return tiny_values(
        data,
        out_dir,
        parallel=parallel,
        optimizer="muon",
        grad_accum=4,
        max_iters=120,  # a tiny model's steps take ms: the kill lands well before the end
        ckpt_interval=10,
        keep_ckpts=2,
        log_interval=7,
    )


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The uninterrupted 2-process run of _kill_values for DDP or FSDP, made once for the
    module (a module's tests share a worker: docs/testing.md)."""
    made: dict[str, Path] = {}

    def get(parallel: str) -> Path:
        if parallel not in made:
            tmp = tmp_path_factory.mktemp(f"straight-{parallel}")
            values = _kill_values(write_tiny_shards(tmp / "shards"), tmp / "run", parallel)
            _run2(write_config_yaml(tmp / "straight.yaml", values))
            made[parallel] = tmp / "run"
        return made[parallel]

    return get


@pytest.mark.slow
# DDP and FSDP, each with a SIGKILL to the launcher's process group and one to its pid
# alone (torchrun starts each worker in a session of its own, so neither signal reaches
# a worker itself), under torchrun and under make's launcher (pipeline.launch)
@pytest.mark.parametrize(
    ("parallel", "target", "launcher"),
    [
        ("fsdp", "group", "torch.distributed.run"),
        ("fsdp", "pid", "pipeline.launch"),
        ("ddp", "pid", "pipeline.launch"),
        ("ddp", "group", "torch.distributed.run"),
    ],
)
def test_a_killed_launcher_takes_its_workers_and_the_rerun_is_bitwise_identical(
    tmp_path: Path,
    parallel: str,
    target: str,
    launcher: str,
    straight_runs: Callable[[str], Path],
) -> None:
    data = write_tiny_shards(tmp_path / "shards")
    values = _kill_values(data, tmp_path / "killed", parallel)
    config = write_config_yaml(tmp_path / "killed.yaml", values)
    proc = _torchrun(config, launcher, start_new_session=True)  # it leads its own group
    ranks: list[psutil.Process] = []

    def kill_launcher() -> None:
        ranks.extend(psutil.Process(proc.pid).children(recursive=True))
        if target == "group":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)

    kill_after_first_checkpoint(proc, tmp_path / "killed", kill_launcher, 0.02, 180)
    deadline = time.monotonic() + 10  # the kernel's parent-death signal: at once
    while (alive := [p for p in ranks if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(ranks) >= 2 and alive == [], alive
    killed_at = [p.name for p in list_checkpoints(tmp_path / "killed")]
    time.sleep(1)  # nobody goes on writing
    assert [p.name for p in list_checkpoints(tmp_path / "killed")] == killed_at
    last = "ckpt-00000120" + (".dcp" if parallel == "fsdp" else ".pt")
    assert killed_at and killed_at[-1] < last

    _run2(config)  # the rerun resumes by itself (the lock of the killed run is free)
    runs = (tmp_path / "killed", straight_runs(parallel))
    a, b = (load_latest(r) for r in runs)
    assert a is not None and b is not None and a[1].name == b[1].name == last
    for name, t in b[0][MODEL].items():
        assert torch.equal(a[0][MODEL][name], t), name
    ma, mb = (
        [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run)] for run in runs
    )
    assert ma == mb
    assert not list((tmp_path / "killed").glob(".tmp-*"))  # a save after the kill cleaned up


def test_one_process_fsdp_writes_folders_and_a_broken_save_leaves_the_last_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = write_tiny_shards(tmp_path / "shards")
    run = tmp_path / "run"
    values = tiny_values(data, run, parallel="fsdp", max_iters=10, ckpt_interval=5)
    assert train(build(TrainConfig, values)) == 0
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000005.dcp", "ckpt-00000010.dcp"]
    # a kill mid-save: the temporary folder is no checkpoint; a kill between DCP's files
    # and state.pt cannot leave a final folder, but one without .metadata reads as broken
    half = run / ".tmp-ckpt-00000015.dcp"
    half.mkdir()
    (half / "__0_0.distcp").write_bytes(b"half")
    (run / "ckpt-00000010.dcp" / ".metadata").unlink()
    found = load_latest(run)
    assert found is not None and found[1].name == "ckpt-00000005.dcp"
    assert "ckpt-00000010.dcp does not load" in caplog.text
    assert train(build(TrainConfig, dict(values, max_iters=15))) == 0  # resumes at 5
    names = sorted(p.name for p in run.iterdir() if "ckpt" in p.name)
    assert names == [
        "ckpt-00000005.dcp",
        "ckpt-00000010.dcp",
        "ckpt-00000010.dcp.corrupt",  # set aside: it did not load
        "ckpt-00000015.dcp",
    ]
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [5, 10, 15]


@pytest.mark.parametrize("damage", ["truncated", "missing", "unseen by the file check"])
def test_a_damaged_dcp_folder_is_set_aside_and_the_rerun_is_bitwise_from_the_previous(
    tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder with its .metadata but a shard cut short or gone: the rerun sets it aside
    as *.corrupt and resumes from the one before, ending where a run that only ever had
    that one ends. The third case turns the file check off, so DCP's own load meets the
    damage (its CheckpointException is a BaseException: once it ended the run)."""
    data = write_tiny_shards(tmp_path / "shards")
    kw: dict[str, Any] = dict(parallel="fsdp", optimizer="muon", ckpt_interval=5, keep_ckpts=3)
    run, ref = tmp_path / "run", tmp_path / "ref"
    assert train(build(TrainConfig, tiny_values(data, run, max_iters=10, **kw))) == 0
    shutil.copytree(run, ref)
    shutil.rmtree(ref / "ckpt-00000010.dcp")  # the reference only ever had step 5's
    shard = run / "ckpt-00000010.dcp" / "__0_0.distcp"
    if damage == "missing":
        shard.unlink()
    else:
        with shard.open("r+b") as f:
            f.truncate(shard.stat().st_size // 2)
    if damage == "unseen by the file check":
        monkeypatch.setattr("model.checkpoint_dcp.check_files", lambda path: None)
    with caplog.at_level("WARNING"):
        assert train(build(TrainConfig, tiny_values(data, run, max_iters=15, **kw))) == 0
    assert (run / "ckpt-00000010.dcp.corrupt").is_dir()
    if damage == "unseen by the file check":
        assert "ckpt-00000010.dcp does not load (" in caplog.text
    else:  # named by the file check, before any load
        assert "(its shard __0_0.distcp is " in caplog.text and ".metadata says " in caplog.text
    assert train(build(TrainConfig, tiny_values(data, ref, max_iters=15, **kw))) == 0
    a, b = load_latest(run), load_latest(ref)
    assert a is not None and b is not None and a[1].name == b[1].name == "ckpt-00000015.dcp"
    for name, t in b[0][MODEL].items():
        assert torch.equal(a[0][MODEL][name], t), name


def _muon_rank(rank: int, init: str, out: str) -> None:
    """One of two gloo ranks: ShardedMuon on FSDP2 shards of matrices whose rows do not
    divide by 2 (5, 3 and 1 rows: padded shards, an empty one) against torch.optim.Muon
    on whole copies; this rank's verdict to out/<rank>."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        shapes = [(5, 4), (3, 6), (1, 3), (4, 4)]
        model = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(*s)) for s in shapes])
        whole = [p.detach().clone() for p in model]
        fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
        kw: dict[str, Any] = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
        ours, theirs = ShardedMuon(list(model), **kw), torch.optim.Muon(whole, **kw)
        for step in range(3):
            torch.manual_seed(100 + step)  # the same gradients on both ranks
            grads = [torch.randn(*s) for s in shapes]
            for p, w, g in zip(model, whole, grads, strict=True):
                p.grad = torch.distributed.tensor.distribute_tensor(g, p.device_mesh, p.placements)
                w.grad = g.clone()
            ours.step()
            theirs.step()
        same = all(torch.equal(p.full_tensor(), w) for p, w in zip(model, whole, strict=True))
        Path(out, str(rank)).write_text("equal" if same else "differ")
    finally:
        dist.destroy_process_group()


def test_sharded_muon_on_uneven_shards_is_torch_muon_on_whole_matrices(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(  # type: ignore[no-untyped-call]
        _muon_rank, args=(init, str(tmp_path)), nprocs=2, start_method="spawn"
    )
    assert [(tmp_path / r).read_text() for r in ("0", "1")] == ["equal", "equal"]
