"""The shard loader against the raw shards: windows, rank split, wrap-around, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.errors import InputError, StateError
from model.loader import ShardLoader
from model.shards import write_shard

# three train shards of uneven length: 1000 + 1000 + 357 tokens, one stream 0..2356
LENGTHS = (1000, 1000, 357)


@pytest.fixture
def folder(tmp_path):
    stream = np.arange(sum(LENGTHS), dtype=np.uint16)
    start = 0
    for i, n in enumerate(LENGTHS):
        write_shard(tmp_path, "train", i, stream[start : start + n])
        start += n
    write_shard(tmp_path, "val", 0, (np.arange(200) * 7 % 50257).astype(np.uint16))
    return tmp_path


def _stream(folder, split="train"):
    files = sorted(folder.glob(f"{split}_*.npy"))
    return np.concatenate([np.load(f) for f in files]).astype(np.int64)


def test_windows_are_exact_and_cross_shard_boundaries(folder):
    stream = _stream(folder)
    B, T = 3, 50
    dl = ShardLoader(folder, "train", B, T)
    assert dl.tokens == sum(LENGTHS)
    for step in range(15):  # 15 * 150 = 2250 tokens: crosses both shard boundaries
        x, y = dl.next_batch()
        assert x.dtype == torch.int64 and x.shape == (B, T) and y.shape == (B, T)
        base = step * B * T
        want = stream[base : base + B * T + 1]
        assert np.array_equal(x.numpy(), want[:-1].reshape(B, T))
        assert np.array_equal(y.numpy(), want[1:].reshape(B, T))
        assert torch.equal(x[:, 1:], y[:, :-1])


def test_ranks_are_disjoint_and_cover_the_single_rank_stream(folder):
    B, T, W = 2, 40, 3
    single = ShardLoader(folder, "train", B, T)
    ranks = [ShardLoader(folder, "train", B, T, rank=r, world_size=W) for r in range(W)]
    for _ in range(4):
        got = [dl.next_batch()[0] for dl in ranks]
        want = [single.next_batch()[0] for _ in range(W)]  # grad accum W on one rank
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)
        seen = torch.cat([g.flatten() for g in got])
        assert len(set(seen.tolist())) == W * B * T  # disjoint


def test_wraps_to_start_deterministically(folder):
    B, T = 4, 100  # stride 400: 5 steps fit (2001 <= 2357), the 6th would need 2401
    dl = ShardLoader(folder, "train", B, T)
    first = [dl.next_batch()[0] for _ in range(5)]
    assert dl.state_dict()["epoch"] == 0
    again = [dl.next_batch()[0] for _ in range(5)]
    assert dl.state_dict()["epoch"] == 1
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)


def test_state_round_trip_serves_the_same_batches(folder):
    B, T = 2, 64
    a = ShardLoader(folder, "train", B, T, rank=1, world_size=2)
    for _ in range(7):
        a.next_batch()
    state = a.state_dict()
    assert all(type(v) is int for v in state.values())
    torch.save(state, folder / "s.pt")
    b = ShardLoader(folder, "train", B, T, rank=1, world_size=2)
    b.load_state_dict(torch.load(folder / "s.pt", weights_only=True))
    for _ in range(12):  # through a wrap-around
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.state_dict() == b.state_dict() and a.state_dict()["epoch"] >= 1


def test_reset_replays_the_val_set(folder):
    dl = ShardLoader(folder, "val", 2, 16)
    first = [dl.next_batch()[1] for _ in range(3)]
    dl.reset()
    assert all(torch.equal(f, dl.next_batch()[1]) for f in first)
    assert dl.state_dict() == {"position": 3 * 32, "epoch": 0, "tokens": 200}


def test_not_enough_tokens_says_what_to_do(folder):
    ShardLoader(folder, "val", 1, 199)  # 199 + 1 = 200 tokens: exactly enough
    with pytest.raises(InputError) as e:
        ShardLoader(folder, "val", 2, 100, world_size=2)
    msg = str(e.value)
    assert str(folder) in msg and "200" in msg and "401" in msg
    assert "tokenize more data" in msg and "micro_batch" in msg and "fewer GPUs" in msg


def test_no_shards_says_run_tokenize(tmp_path):
    with pytest.raises(InputError, match="make tokenize"):
        ShardLoader(tmp_path / "missing", "train", 1, 8)


def test_state_from_other_data_is_refused(folder):
    dl = ShardLoader(folder, "val", 2, 16)
    with pytest.raises(StateError, match="position=5000"):
        dl.load_state_dict({"position": 5000, "epoch": 0, "tokens": 9000})


def test_shards_are_memory_mapped(folder):
    dl = ShardLoader(folder, "train", 2, 8)
    assert all(isinstance(s, np.memmap) for s in dl._shards)  # mapped, not loaded


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches(folder):
    cpu = ShardLoader(folder, "train", 2, 32)
    gpu = ShardLoader(folder, "train", 2, 32, device="cuda")
    for _ in range(40):
        (xc, yc), (xg, yg) = cpu.next_batch(), gpu.next_batch()
        assert xg.is_cuda and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
