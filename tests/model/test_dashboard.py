"""The TensorBoard dashboard (model/dashboard.py): a run's scalars read back with
TensorBoard's own reader equal metrics.jsonl, each step once, a resumed run too."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from model.checkpoint import list_checkpoints
from model.metrics import read_metrics
from pipeline.train import train
from tests.model.train_fixtures import tiny_config


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})  # purges orphans
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_the_dashboard_holds_what_metrics_jsonl_holds_after_a_resume(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODEGPT_SKIP_SMOKE_CHECK", "1")
    run = tmp_path / "run"
    cfg = tiny_config(shards, run, max_iters=20, log_interval=5, eval_interval=10)
    assert cfg.tensorboard  # on by default
    assert train(cfg) == 0
    # back to the step-10 checkpoint, as after a kill before step 20's: the rerun logs
    # steps 15 and 20 again, and the dashboard must show each once, as metrics.jsonl does
    last = list_checkpoints(run)[-1]
    shutil.rmtree(last) if last.is_dir() else last.unlink()
    assert train(cfg) == 0
    records = read_metrics(run)
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    tb = _scalars(run)
    assert [s for s, _ in tb["train/loss"]] == [r["step"] for r in steps] == [5, 10, 15, 20]
    for (_, value), r in zip(tb["train/loss"], steps, strict=True):
        assert value == pytest.approx(r["loss"], rel=1e-6)
    assert [s for s, _ in tb["train/grad_norm"]] == [5, 10, 15, 20]
    assert [v for _, v in tb["train/lr"]] == pytest.approx([r["lr"] for r in steps], rel=1e-6)
    assert [s for s, _ in tb["speed/tokens_per_s"]] == [5, 10, 15, 20]
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in tb["val/loss"]] == [
        (r["step"], r["val_loss"]) for r in evals
    ]
    assert [r["step"] for r in evals] == [0, 10, 20]


def test_tensorboard_false_writes_no_event_files(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODEGPT_SKIP_SMOKE_CHECK", "1")
    run = tmp_path / "run"
    assert train(tiny_config(shards, run, max_iters=5, log_interval=5, tensorboard=False)) == 0
    assert read_metrics(run) and not (run / "tb").exists()


@pytest.mark.slow
def test_make_tensorboard_serves_the_runs_on_loopback() -> None:
    """The real `make tensorboard`, on a free port of 127.0.0.1, answers with out/ as its
    log folder; stopped after one request or 90 s."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    from tests.conftest import REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "tensorboard", f"TB_PORT={port}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline, answer = time.monotonic() + 90, None
        while answer is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                url = f"http://127.0.0.1:{port}/data/environment"
                with urllib.request.urlopen(url, timeout=5) as r:
                    answer = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert answer is not None, (
            proc.stderr.read().decode()[-2000:] if proc.poll() else "no answer"
        )
        assert answer["data_location"] == "out"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
