"""Shared fixtures: the repository root and the tiny token shards the training tests use."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.model.train_fixtures import write_tiny_shards

REPO = Path(__file__).resolve().parents[1]  # the repository root: commands run from here


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny learnable train/val shard folder (tests/model/train_fixtures.py), made once."""
    return write_tiny_shards(tmp_path_factory.mktemp("shards"))
