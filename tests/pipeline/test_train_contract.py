"""`python -m pipeline train` against bad data, a second writer and a full disk: real processes.

Each case must end in one line on stderr naming the file and the fix, with the
documented exit code (2: the user's to fix; 3: a resource stop, work kept), never
a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.checkpoint import list_checkpoints
from model.manifest import write_manifest
from model.shards import write_shard
from pipeline.tokenize import manifest
from tests.conftest import REPO, tmpfs_or_skip
from tests.model.train_fixtures import TOKENIZER, tiny_values, write_config_yaml, write_tiny_shards

ENV = {**os.environ, "CODEGPT_SKIP_SMOKE_CHECK": "1", "CODEGPT_LOG": "WARNING"}


def train_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "train", "--config", str(config)]


def run_train(tmp_path: Path, data: Path, **over: Any) -> subprocess.CompletedProcess[str]:
    values = tiny_values(data, tmp_path / "run", **over)
    config = write_config_yaml(tmp_path / "train.yaml", values)
    return subprocess.run(
        train_cmd(config), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
    )


def one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    err = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith("codegpt train: error: "), done.stderr[-2000:]
    return err[0]


def test_an_unfinished_tokenize_is_refused_then_allowed(tmp_path: Path) -> None:
    data = write_tiny_shards(tmp_path / "shards")
    m = manifest.write_for_shards(data, TOKENIZER)
    m.complete = False
    write_manifest(data, m)
    line = one_line(run_train(tmp_path, data, max_iters=2), 2)
    assert f"{data / 'manifest.json'} says complete: false" in line
    assert "make tokenize" in line and "allow_partial=true" in line
    done = run_train(tmp_path, data, max_iters=2, allow_partial=True)
    assert done.returncode == 0 and "allow_partial=true" in done.stderr


def test_a_tokenizer_the_model_cannot_hold_is_named(tmp_path: Path) -> None:
    data = write_tiny_shards(tmp_path / "shards")
    manifest.write_for_shards(data, {"name": "o200k", "n_vocab": 200_019})
    line = one_line(run_train(tmp_path, data, max_iters=2), 2)
    assert "tokenizer 'o200k' has 200,019 ids" in line and "vocab_size=256" in line


def test_an_out_of_range_id_names_the_shard_and_the_offset(tmp_path: Path) -> None:
    data = tmp_path / "shards"
    ids = (np.arange(40_000) % 200).astype(np.uint16)
    ids[123] = 255  # below n_vocab's promise but above what vocab_size=200 holds
    write_shard(data, "train", 0, ids)
    write_shard(data, "val", 0, ids[:4000] % 100)
    manifest.write_for_shards(data, {"name": "counting", "n_vocab": 200})
    line = one_line(run_train(tmp_path, data, max_iters=2, vocab_size=200, shuffle=False), 2)
    assert f"{data / 'train_000000.npy'}: token id 255 at offset 123 is >= vocab_size=200" in line


@pytest.mark.slow
@pytest.mark.serial  # "at once" is a time limit: alone on the CPU
def test_a_second_trainer_on_the_same_run_stops_at_once_naming_the_first(
    tmp_path: Path, shards: Path
) -> None:
    values = tiny_values(shards, tmp_path / "run", max_iters=100_000, ckpt_interval=50)
    config = write_config_yaml(tmp_path / "train.yaml", values)
    first = subprocess.Popen(train_cmd(config), cwd=REPO, env=ENV, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "run" / "metrics.jsonl").exists() and time.monotonic() < deadline:
            assert first.poll() is None
            time.sleep(0.05)
        t0 = time.monotonic()
        second = subprocess.run(
            train_cmd(config), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60
        )
        line = one_line(second, 2)
        assert f"is in use by another process (pid {first.pid} (train))" in line
        assert time.monotonic() - t0 < 30  # at once: no model built, no step taken
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kernel released the killed holder's lock: the next run goes ahead and resumes
    done = subprocess.run(
        [*train_cmd(config), "max_iters=60"], cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def _train_on_tmpfs(tmp_path: Path, data: Path, size_k: int, **over: Any) -> tuple[int, str, Path]:
    """Train with out_dir on a size_k KiB tmpfs (a private mount namespace); the run is copied out."""
    tmpfs_or_skip(tmp_path)
    disk, copy = tmp_path / "disk", tmp_path / "copy"
    disk.mkdir()
    values = tiny_values(data, disk / "run", **over)
    config = write_config_yaml(tmp_path / "train.yaml", values)
    cmd = " ".join(train_cmd(config))
    script = (
        f"mount -t tmpfs -o size={size_k}k none {disk} && cd {REPO} && "
        f"{{ {cmd} 2>{tmp_path}/err; echo $? > {tmp_path}/rc; }}; cp -a {disk}/run {copy}"
    )
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, timeout=180, env=ENV)
    return int((tmp_path / "rc").read_text()), (tmp_path / "err").read_text(), copy


def test_a_disk_that_fills_up_stops_cleanly_before_a_checkpoint(
    tmp_path: Path, shards: Path
) -> None:
    """Room for two checkpoints of 0.47 MB but not three: the third is refused before it is
    written, with the numbers and the last good checkpoint, exit code 3."""
    rc, err, run = _train_on_tmpfs(  # AdamW: the checkpoint size the tmpfs is sized for
        tmp_path, shards, 1300, max_iters=60, ckpt_interval=10, keep_ckpts=3, optimizer="adamw"
    )
    lines = err.strip().splitlines()
    assert rc == 3 and len(lines) == 1, err
    assert lines[0].startswith("codegpt train: error: disk full writing ")
    assert "MiB free" in lines[0] and "a checkpoint needs 0.4" in lines[0]
    good = list_checkpoints(run)
    assert good and f"the last good checkpoint is {good[-1].name}" in lines[0]
    assert not list(run.glob(".tmp-*"))  # no half-written checkpoint left


def test_a_disk_too_small_for_one_checkpoint_is_refused_before_any_step(
    tmp_path: Path, shards: Path
) -> None:
    rc, err, run = _train_on_tmpfs(tmp_path, shards, 400, max_iters=60)
    assert rc == 3 and "a checkpoint needs" in err and "none yet" in err, err
    assert not (run / "metrics.jsonl").exists() or "loss" not in (run / "metrics.jsonl").read_text()


def test_torch_zip_writer_failing_on_a_full_disk_is_one_line(tmp_path: Path) -> None:
    """torch.save into a full tmpfs raises RuntimeError('... unexpected pos ...'): reported as
    a full disk with the last good checkpoint, the temporary removed."""
    tmpfs_or_skip(tmp_path)
    disk = tmp_path / "disk"
    disk.mkdir()
    code = (
        "import torch, sys\n"
        "from model.checkpoint import save_checkpoint\n"
        "from model.errors import ResourceError\n"
        f"save_checkpoint('{disk}/run', 1, {{'model': torch.zeros(10), 'step': 1}})\n"
        "try:\n"
        f"    save_checkpoint('{disk}/run', 2, {{'model': torch.zeros(200_000), 'step': 2}})\n"
        "except ResourceError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    script = f'mount -t tmpfs -o size=256k none {disk} && cd {REPO} && {sys.executable} -c "{code}"; echo rc=$? ; ls -a {disk}/run'
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    assert "rc=3" in done.stdout, done.stdout + done.stderr
    assert "disk full writing" in done.stdout and "ckpt-00000001.pt" in done.stdout
    assert ".tmp-" not in done.stdout.split("rc=3")[1]
