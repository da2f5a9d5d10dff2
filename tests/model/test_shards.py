"""The shard format: atomic writes, plain np.load, header checks, numbering."""

from __future__ import annotations

import numpy as np
import pytest

from model import shards
from model.errors import InputError


def test_write_then_plain_load(tmp_path):
    toks = np.arange(1000, dtype=np.uint16)
    p = shards.write_shard(tmp_path, "train", 0, toks)
    assert p.name == "train_000000.npy"
    assert np.array_equal(np.load(p), toks)  # build-nanogpt style
    mm = shards.open_shard(p)
    assert isinstance(mm, np.memmap) and np.array_equal(mm, toks)
    assert not list(tmp_path.glob("*.tmp"))


def test_wrong_dtype_is_refused(tmp_path):
    with pytest.raises(ValueError):
        shards.write_shard(tmp_path, "train", 0, np.arange(10, dtype=np.int32))
    np.save(tmp_path / "train_000000.npy", np.arange(10, dtype=np.int64))
    with pytest.raises(InputError, match="train_000000.npy.*uint16"):
        shards.open_shard(tmp_path / "train_000000.npy")


def test_truncated_shard_names_file(tmp_path):
    p = shards.write_shard(tmp_path, "val", 0, np.arange(5000, dtype=np.uint16))
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(InputError, match="val_000000.npy"):
        shards.open_shard(p)


def test_list_shards_in_order_and_gaps(tmp_path):
    for i in (0, 1, 2):
        shards.write_shard(tmp_path, "train", i, np.zeros(3, dtype=np.uint16))
    (tmp_path / "train_000003.npy.tmp").write_bytes(b"partial")
    assert [p.name for p in shards.list_shards(tmp_path, "train")] == [
        "train_000000.npy",
        "train_000001.npy",
        "train_000002.npy",
    ]
    assert shards.remove_temporaries(tmp_path)
    (tmp_path / "train_000001.npy").unlink()
    with pytest.raises(InputError, match="numbered"):
        shards.list_shards(tmp_path, "train")
