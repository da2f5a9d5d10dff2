"""The trainer's data (model/loader.py, model/order.py) against the raw shards.

Windows, the shuffled order (a permutation per epoch, different each epoch, mixed from the
first batch), ranks, resume, the fixed eval set, and the data contract's one-line errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model import tokenizer
from model.dataset import open_dataset
from model.errors import InputError
from model.loader import EvalSet, TrainLoader, Windows
from model.manifest import write_manifest
from model.order import permute
from model.shards import list_shards, write_shard
from pipeline.tokenize import manifest

# three train shards of uneven length: 1000 + 1000 + 357 tokens, one stream 0..2356
LENGTHS = (1000, 1000, 357)
VOCAB = 4096
COUNTING = {"name": "counting", "n_vocab": 2357}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    stream = np.arange(sum(LENGTHS), dtype=np.uint16)
    start = 0
    for i, n in enumerate(LENGTHS):
        write_shard(tmp_path, "train", i, stream[start : start + n])
        start += n
    write_shard(tmp_path, "val", 0, (np.arange(2000) * 7 % 2000).astype(np.uint16))
    manifest.write_for_shards(tmp_path, COUNTING)
    return tmp_path


def windows(folder: Path, split: str = "train", T: int = 50) -> Windows:
    return Windows(list_shards(folder, split), split, T, VOCAB)


def loader(
    folder: Path, B: int = 3, T: int = 50, shuffle: bool = True, **kw: object
) -> TrainLoader:
    return TrainLoader(windows(folder, T=T), B, shuffle=shuffle, seed=7, **kw)  # type: ignore[arg-type]


def _stream(folder: Path) -> np.ndarray:
    return np.concatenate([np.load(p) for p in list_shards(folder, "train")]).astype(np.int64)


def served_windows(dl: TrainLoader, steps: int) -> list[int]:
    """The window index of every row served, recovered from the tokens (x[b, 0] = k * T)."""
    return [int(row[0]) // dl.windows.T for _ in range(steps) for row in dl.next_batch()[0]]


# ------------------------------------------------------------------ the permutation


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4099])
def test_permute_is_a_bijection_and_differs_per_epoch(n: int) -> None:
    a = permute(np.arange(n), n, seed=1, epoch=0)
    assert sorted(a.tolist()) == list(range(n))
    if n >= 64:
        b = permute(np.arange(n), n, seed=1, epoch=1)
        assert sorted(b.tolist()) == list(range(n)) and (a != b).mean() > 0.9
        assert (a != permute(np.arange(n), n, seed=2, epoch=0)).mean() > 0.9
        assert not np.array_equal(a, np.arange(n))


def test_permute_of_some_positions_equals_the_full_order() -> None:
    n = 13_700_000  # the reference run's windows: nothing of this size is materialised
    pos = np.array([0, 5, 12_345_678, n - 1])
    full = permute(np.arange(n - 10, n), n, 3, 4)
    assert np.array_equal(permute(np.arange(n - 10, n)[-1:], n, 3, 4), full[-1:])
    assert permute(pos, n, 3, 4).shape == (4,) and permute(pos, n, 3, 4).max() < n


# ------------------------------------------------------------------ training windows


def test_windows_are_exact_and_cross_shard_boundaries(folder: Path) -> None:
    stream = _stream(folder)
    dl = loader(folder, B=3, T=50, shuffle=False)
    assert dl.windows.tokens == sum(LENGTHS) and dl.windows.count == (sum(LENGTHS) - 1) // 50
    for step in range(15):  # 15 * 150 = 2250 tokens: crosses both shard boundaries
        x, y = dl.next_batch()
        assert x.dtype == torch.int64 and x.shape == (3, 50) and y.shape == (3, 50)
        want = stream[step * 150 : step * 150 + 151]  # stream order: today's spans
        assert np.array_equal(x.numpy(), want[:-1].reshape(3, 50))
        assert np.array_equal(y.numpy(), want[1:].reshape(3, 50))


def test_shuffled_epoch_visits_every_window_once_then_a_new_order(folder: Path) -> None:
    dl = loader(folder, B=3, T=50)
    W = dl.windows.count  # 47 windows; a batch of 3 crosses each epoch's end
    first = served_windows(dl, W)  # 3 epochs' worth of rows
    for e in range(3):
        epoch = first[e * W : (e + 1) * W]
        assert sorted(epoch) == list(range(W)), e
    assert first[:W] != first[W : 2 * W] and dl.epoch == 3
    stream = _stream(folder)
    x, y = loader(folder, B=3, T=50).next_batch()
    for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):  # each row is a real window
        k = int(row_x[0])
        assert np.array_equal(row_x, stream[k : k + 50]) and np.array_equal(
            row_y, stream[k + 1 : k + 51]
        )


def test_a_folder_of_two_languages_is_mixed_from_the_first_batches(tmp_path: Path) -> None:
    """First half of the stream one 'language' (ids < 100), second half another (>= 100)."""
    half = 20_000
    a = np.random.default_rng(0).integers(0, 100, half).astype(np.uint16)
    b = np.random.default_rng(1).integers(100, 200, half).astype(np.uint16)
    write_shard(tmp_path, "train", 0, a)
    write_shard(tmp_path, "train", 1, b)
    dl = TrainLoader(
        Windows(list_shards(tmp_path, "train"), "train", 64, 256), 4, shuffle=True, seed=1337
    )
    rows = torch.cat([dl.next_batch()[0] for _ in range(4)])  # the first 16 windows
    second = (rows.float().mean(dim=1) >= 100).float().mean().item()
    assert 0.25 <= second <= 0.75, second  # both halves, from step one
    stream = TrainLoader(
        Windows(list_shards(tmp_path, "train"), "train", 64, 256), 4, shuffle=False, seed=0
    )
    assert all(int(stream.next_batch()[0].max()) < 100 for _ in range(4))  # stream order is not


def test_ranks_are_disjoint_and_cover_the_single_rank_windows(folder: Path) -> None:
    B, W = 2, 3
    single = loader(folder, B=B, T=40)
    ranks = [loader(folder, B=B, T=40, rank=r, world_size=W) for r in range(W)]
    for _ in range(30):  # through several epochs
        got = [dl.next_batch()[0] for dl in ranks]
        want = [single.next_batch()[0] for _ in range(W)]  # grad accum W on one rank
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)
        firsts = [int(r[0]) for g in got for r in g]
        assert len(set(firsts)) == W * B  # disjoint windows


def test_state_round_trip_serves_the_same_batches(folder: Path) -> None:
    a = loader(folder, B=2, T=64, rank=1, world_size=2)
    for _ in range(7):
        a.next_batch()
    state = a.state_dict()
    torch.save(state, folder / "s.pt")
    b = loader(folder, B=2, T=64, rank=1, world_size=2)
    b.load_state_dict(torch.load(folder / "s.pt", weights_only=True))
    for _ in range(20):  # through an epoch boundary
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.state_dict() == b.state_dict() and a.epoch >= 1


def test_an_old_stream_state_continues_in_order(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dl = loader(folder, B=2, T=50, shuffle=False)
    dl.load_state_dict({"position": 300, "epoch": 1, "tokens": 2357})
    assert dl.served == dl.windows.count + 6 and "older loader" in caplog.text


def test_not_enough_tokens_says_what_to_do(folder: Path) -> None:
    val = windows(folder, "val", T=199)
    TrainLoader(val, 10, shuffle=True, seed=0)  # 10 windows of 199 fit in 2000 tokens
    with pytest.raises(InputError) as e:
        TrainLoader(val, 6, shuffle=True, seed=0, world_size=2)
    msg = str(e.value)
    assert "2,000" in msg and "tokenize more data" in msg and "fewer GPUs" in msg


def test_shards_are_memory_mapped(folder: Path) -> None:
    assert all(isinstance(s, np.memmap) for s in windows(folder)._shards)


# ------------------------------------------------------------------ the eval set


def test_eval_set_is_fixed_and_spread_over_the_whole_split(folder: Path) -> None:
    val = windows(folder, "val", T=16)
    ev = EvalSet(val, 2, iters=5)
    first = [ev.batch(i)[1] for i in range(ev.iters)]
    assert all(torch.equal(a, ev.batch(i)[1]) for i, a in enumerate(first))
    assert all(  # positions name the targets the batch holds
        torch.equal(ev.batch(i)[1], torch.from_numpy(val.batch(ev.all[2 * i : 2 * i + 2])[1]))
        and (ev.positions(i)[:, 0] == ev.all[2 * i : 2 * i + 2] * 16 + 1).all()
        for i in range(ev.iters)
    )
    assert ev.all.min() == 0 and ev.all.max() >= 0.85 * val.count  # not the first 10 windows
    # two ranks evaluate what one process does with twice the batches, between them
    one = EvalSet(val, 2, iters=10)
    ranks = [EvalSet(val, 2, iters=5, rank=r, world_size=2) for r in range(2)]
    for i in range(5):
        for r in range(2):
            assert torch.equal(ranks[r].batch(i)[0], one.batch(2 * i + r)[0])


# ------------------------------------------------------------------ the data contract


def test_a_finished_folder_passes(folder: Path) -> None:
    data = open_dataset(folder, VOCAB)
    assert data.complete and [p.name for p in data.shards["train"]] == [
        "train_000000.npy",
        "train_000001.npy",
        "train_000002.npy",
    ]


def test_no_manifest_or_an_incomplete_one_is_refused_unless_allowed(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m = manifest.write_for_shards(folder, COUNTING)
    m.complete = False
    write_manifest(folder, m)
    with pytest.raises(InputError, match=r"complete: false.*make tokenize.*allow_partial=true"):
        open_dataset(folder, VOCAB)
    assert not open_dataset(folder, VOCAB, allow_partial=True).complete
    assert "incomplete" in caplog.text
    (folder / "manifest.json").unlink()
    with pytest.raises(InputError, match=r"manifest.json not found.*allow_partial=true"):
        open_dataset(folder, VOCAB)
    assert len(open_dataset(folder, VOCAB, allow_partial=True).shards["train"]) == 3


def test_a_tokenizer_that_does_not_fit_the_model_is_named(folder: Path) -> None:
    manifest.write_for_shards(folder, {"name": "big", "n_vocab": 100_000})
    with pytest.raises(InputError, match=r"100,000 ids.*vocab_size=4,096.*set vocab_size"):
        open_dataset(folder, VOCAB)
    manifest.write_for_shards(folder, {"name": tokenizer.DEFAULT, "vocab_sha256": "0" * 64})
    with pytest.raises(InputError, match="another gpt2 vocabulary"):
        open_dataset(folder, 50304)
    manifest.write_for_shards(
        folder, {"name": tokenizer.DEFAULT, "vocab_sha256": tokenizer.get().sha256}
    )
    assert open_dataset(folder, 50304).complete
    with pytest.raises(InputError, match="50,257 ids"):
        open_dataset(folder, 50000)


def test_shards_made_with_other_special_tokens_are_refused(folder: Path) -> None:
    gpt2 = {"name": tokenizer.DEFAULT, "vocab_sha256": tokenizer.get().sha256}
    manifest.write_for_shards(folder, {**gpt2, "special_tokens": {"<|endoftext|>": 50256}})
    with pytest.raises(InputError, match=r"other special tokens.*tokenize again"):
        open_dataset(folder, 50304)
    manifest.write_for_shards(folder, {**gpt2, "special_tokens": tokenizer.get().special_tokens})
    assert open_dataset(folder, 50304).complete


def test_an_id_the_model_has_no_row_for_names_the_shard_and_offset(tmp_path: Path) -> None:
    ids = np.arange(3000, dtype=np.uint16) % 200
    ids[2345] = 60_000  # a flipped bit, or another tokenizer's shard
    write_shard(tmp_path, "train", 0, ids[:2000])
    write_shard(tmp_path, "train", 1, ids[2000:])
    dl = TrainLoader(
        Windows(list_shards(tmp_path, "train"), "train", 100, 256), 29, shuffle=False, seed=0
    )
    with pytest.raises(InputError) as e:
        dl.next_batch()
    assert str(e.value).startswith(f"{tmp_path / 'train_000001.npy'}: token id 60000 at offset 345")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches(folder: Path) -> None:
    cpu = loader(folder, B=2, T=32)
    gpu = loader(folder, B=2, T=32, device="cuda")
    for _ in range(40):
        (xc, yc), (xg, yg) = cpu.next_batch(), gpu.next_batch()
        assert xg.is_cuda and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
