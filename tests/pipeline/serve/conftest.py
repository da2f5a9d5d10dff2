"""A real server process on loopback over a tiny run, for the openai client to talk to."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest
import torch

from model.checkpoint import CONFIG, MODEL, save_checkpoint
from model.gpt import GPT, GPTConfig
from tests.conftest import REPO
from tests.model.train_fixtures import tiny_config

KEY = "test-key"


def make_run(out: Path, fim_rate: float, block_size: int = 64) -> Path:
    """A run folder with one checkpoint of a tiny GPT over the full vocabulary."""
    cfg = dataclasses.replace(
        tiny_config(out, out, vocab_size=50304, block_size=block_size), fim_rate=fim_rate
    )
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_train(cfg))
    save_checkpoint(out, 3, {MODEL: model.state_dict(), CONFIG: dataclasses.asdict(cfg)})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT/v1
    run: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text()


def start(run: Path, log: Path, *args: str, timeout: float = 60) -> Server:
    """`python -m pipeline serve` as a process; returns once /health answers."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipeline", "serve", f"out_dir={run}", f"port={port}"]
    with log.open("wb") as f:
        proc = subprocess.Popen([*cmd, "device=cpu", *args], cwd=REPO, env=env, stdout=f, stderr=f)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {log.read_text()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return Server(f"{base}/v1", run, proc, log)
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no /health in {timeout} s: {log.read_text()}")


def stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="package")
def fim_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("fim") / "tinyfim", fim_rate=0.5)


@pytest.fixture(scope="package")
def server(fim_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module: max_batch 4, max_queue 2, a small body limit."""
    log = tmp_path_factory.mktemp("log") / "server.log"
    s = start(fim_run, log, "max_batch=4", "max_queue=2", "max_body_bytes=4096")
    try:
        yield s
    finally:
        stop(s)
