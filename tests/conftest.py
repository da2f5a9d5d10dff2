"""Shared fixtures: the repository root, the tiny token shards the training tests use, and
the probe for a real small tmpfs (the full-disk tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.model.train_fixtures import write_tiny_shards

REPO = Path(__file__).resolve().parents[1]  # the repository root: commands run from here


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny learnable train/val shard folder (tests/model/train_fixtures.py), made once."""
    return write_tiny_shards(tmp_path_factory.mktemp("shards"))


def tmpfs_or_skip(where: Path) -> None:
    """Skip unless this machine lets us mount a tmpfs in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not available")
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=16k none {where}"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode().strip()}")
