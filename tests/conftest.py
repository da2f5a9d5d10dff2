"""Shared fixtures: the repository root, the costly things the suite builds once per session
(built_once: one build however many pytest-xdist workers ask, checked unchanged at the end),
the tiny token shards the training tests use, and the probe for a real small tmpfs (the
full-disk tests). docs/testing.md says how the suite is laid out."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from tests.model.train_fixtures import write_code_shards, write_tiny_shards

REPO = Path(__file__).resolve().parents[1]  # the repository root: commands run from here

# A pytest-xdist worker runs one test at a time beside the others, one per core: one torch
# thread each (and in the processes its tests start), or two workers' OpenMP teams of two
# fight over two cores (measured: the demo smoke 10.8 s alone, 40 s so).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def folder_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


class Shared:
    """Folders built once per test session and read by many tests.

    The first worker to ask builds one under a file lock in the session's common temporary
    folder (never in the checkout); the others wait for it and reuse it. A test that must
    change one copies it: at the end of the session each folder handed out must still have
    the digest it was built with, or the session fails naming it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.handed: dict[Path, str] = {}

    def get(self, name: str, build: Callable[[Path], object]) -> Path:
        folder = self.root / name
        done = self.root / f"{name}.sha256"
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / f"{name}.lock")):
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                build(folder)
                done.write_text(folder_digest(folder))
        self.handed[folder] = done.read_text()
        return folder

    def changed(self) -> list[str]:
        return [str(f) for f, digest in self.handed.items() if folder_digest(f) != digest]


@pytest.fixture(scope="session")
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shared]:
    base = tmp_path_factory.getbasetemp()
    # A pytest-xdist worker's folder is pytest-N/popen-gwK: pytest-N is common to the
    # workers. (Asked of the config, not of the environment, which a pytest that a test
    # starts inherits.)
    if hasattr(request.config, "workerinput"):
        base = base.parent
    found = Shared(base / "shared")
    yield found
    changed = found.changed()
    assert not changed, f"a test changed a shared fixture (copy it first): {changed}"


@pytest.fixture(scope="session")
def shards(shared: Shared) -> Path:
    """A tiny learnable train/val shard folder (tests/model/train_fixtures.py), made once."""
    return shared.get("tiny-shards", write_tiny_shards)


@pytest.fixture(scope="session")
def code_shards(shared: Shared) -> Path:
    """GPT-2 shards of real Python (train_fixtures.write_code_shards), made once: for the
    tests that decode what a model writes (the counting stream has no text)."""
    return shared.get("code-shards", write_code_shards)


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
