"""Fill-in-the-middle at train time (model/fim.py) and in the loader: the layouts, the
rates, the padding, and the keyed randomness that keeps resume and DDP exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model import fim, tokenizer
from model import tokenizer as _tokenizer
from model.loader import TrainLoader, Windows, make_loaders
from model.shards import list_shards
from model.tokenizer import EOT
from tests.model.train_fixtures import FIM_ON, tiny_config, write_code_shards

GPT2 = _tokenizer.get()  # the fixtures' tokenizer
FIM_MIDDLE = _tokenizer.get().fim_middle  # GPT-2's (the fixtures' tokenizer)
FIM_PAD = _tokenizer.get().fim_pad  # GPT-2's (the fixtures' tokenizer)
FIM_PREFIX = _tokenizer.get().fim_prefix  # GPT-2's (the fixtures' tokenizer)
FIM_SUFFIX = _tokenizer.get().fim_suffix  # GPT-2's (the fixtures' tokenizer)
decode = _tokenizer.get().decode  # GPT-2's (the fixtures' tokenizer)
encode = _tokenizer.get().encode  # GPT-2's (the fixtures' tokenizer)

DOC = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
ALWAYS_PSM, ALWAYS_SPM = fim.Rates(1.0, 0.0), fim.Rates(1.0, 1.0)


def window(*docs: str, length: int | None = None) -> np.ndarray:
    ids: list[int] = []
    for d in docs:
        ids += [*encode(d), EOT]
    if length is not None:
        ids = (ids * (length // len(ids) + 1))[:length]
    return np.array(ids, dtype=np.int64)


def parts_of(tokens: list[int], spm: bool) -> tuple[str, str, str]:
    """prefix, middle, suffix texts of one FIM piece laid out PSM or SPM."""
    if spm:
        assert tokens[:2] == [FIM_PREFIX, FIM_SUFFIX]
        m = tokens.index(FIM_MIDDLE)
        suffix, rest = decode(tokens[2:m]), decode(tokens[m + 1 :])
        return rest, "", suffix  # SPM: prefix and middle run on as one text
    assert tokens[0] == FIM_PREFIX
    s, m = tokens.index(FIM_SUFFIX), tokens.index(FIM_MIDDLE)
    return decode(tokens[1:s]), decode(tokens[m + 1 :]), decode(tokens[s + 1 : m])


@pytest.mark.parametrize("spm", [False, True])
def test_a_piece_is_cut_at_two_characters_and_laid_out_psm_or_spm(spm: bool) -> None:
    row = np.concatenate([window(DOC), np.full(8, EOT)])  # room for the three sentinels
    rates = ALWAYS_SPM if spm else ALWAYS_PSM
    for w in range(30):
        ex = fim.transform(row, rates, fim.window_rng(0, 0, w), GPT2)
        assert ex is not None and len(ex.tokens) == len(row)
        toks = ex.tokens.tolist()
        end = toks.index(EOT)  # the document's end-of-text follows the FIM piece
        prefix, middle, suffix = parts_of(toks[:end], spm)
        assert prefix + middle + suffix == DOC  # nothing lost or added at the cuts
        assert set(toks[end:]) <= {EOT, FIM_PAD}  # then the rest, cut or padded to T + 1
        roles = ex.role[: toks.index(FIM_MIDDLE) + 1]
        assert (roles[[0, -1]] == fim.SENTINEL).all()


def test_the_two_cuts_are_uniform_over_every_character_boundary() -> None:
    """Each cut is a uniform draw over the L + 1 boundaries of an L-character piece, so
    the prefix, the middle and the suffix may each be empty (a cursor at either end). The
    sorted pair's smaller cut is k with probability ((L+1-k)^2 - (L-k)^2) / (L+1)^2, the
    larger with ((k+1)^2 - k^2) / (L+1)^2: a chi-square test of both against 20,000 draws
    (seeded; 12 degrees of freedom, where p = 0.001 is at 32.9)."""
    text = "x = 1\ny = 2\n"  # ASCII, so tokens and characters round-trip
    ids = np.array(encode(text), dtype=np.int64)
    n, size = 20_000, len(text) + 1
    rng = np.random.default_rng(11)
    lo, hi = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
    for _ in range(n):
        prefix, middle, suffix = fim._split(ids, rng, GPT2)
        a, b = len(decode(prefix)), len(decode(middle))
        assert decode(prefix) + decode(middle) + decode(suffix) == text
        lo[a] += 1
        hi[a + b] += 1
    k = np.arange(size)
    want_lo = n * ((size - k) ** 2 - (size - k - 1) ** 2) / size**2
    want_hi = n * ((k + 1) ** 2 - k**2) / size**2
    assert lo[0] > 0 and hi[-1] > 0  # an empty prefix and an empty suffix both happen
    for got, want in ((lo, want_lo), (hi, want_hi)):
        chi2 = float(((got - want) ** 2 / want).sum())
        assert chi2 < 32.9, (got.tolist(), want.round().tolist(), chi2)


def test_end_of_text_tokens_stay_and_only_chosen_pieces_change() -> None:
    row = window(DOC, "x = 1\n", "import os\n", length=200)
    assert fim.transform(row, fim.Rates(0.0, 0.5), fim.window_rng(0, 0, 0), GPT2) is None  # rate 0
    mixed = 0
    for w in range(40):
        ex = fim.transform(row, fim.Rates(0.5, 0.5), fim.window_rng(3, 1, w), GPT2)
        if ex is None:
            continue
        plain = ex.role == fim.PLAIN  # whole pieces, and the end-of-text tokens between them
        for origin in np.unique(ex.origin[plain]):
            got = ex.tokens[plain & (ex.origin == origin)]
            assert np.array_equal(got, row[origin : origin + len(got)])  # unchanged tokens
        chosen = np.unique(ex.origin[ex.role == fim.MIDDLE])
        assert (row[chosen] != EOT).all()  # a FIM piece starts after an end-of-text
        mixed += 0 < int((ex.tokens == FIM_PREFIX).sum()) and plain[ex.tokens != EOT].any()
    assert mixed  # some windows mixed FIM and plain pieces


def test_the_rates_are_the_probabilities_they_say() -> None:
    row = np.concatenate([window(DOC), np.full(8, EOT)])  # one piece a window
    chosen = spm = 0
    n = 2000
    for w in range(n):
        ex = fim.transform(row, fim.Rates(0.5, 0.25), fim.window_rng(11, 0, w), GPT2)
        if ex is not None:
            chosen += 1
            spm += int(ex.tokens[1] == FIM_SUFFIX)  # SPM opens <fim_prefix> <fim_suffix>
    # binomial: sd of the shares ~0.011 and ~0.014; the bounds are about 4.5 sd
    assert 0.45 < chosen / n < 0.55
    assert 0.19 < spm / chosen < 0.31


def test_draws_are_a_pure_function_of_seed_epoch_and_window() -> None:
    row = window(DOC, length=120)
    a = fim.transform(row, ALWAYS_PSM, fim.window_rng(1, 2, 3), GPT2)
    b = fim.transform(row, ALWAYS_PSM, fim.window_rng(1, 2, 3), GPT2)
    assert a is not None and b is not None and np.array_equal(a.tokens, b.tokens)
    others = [
        fim.transform(row, ALWAYS_PSM, fim.window_rng(*k), GPT2) for k in [(1, 2, 4), (1, 3, 3)]
    ]
    assert all(o is not None and not np.array_equal(o.tokens, a.tokens) for o in others)


def test_padded_targets_are_ignored_by_the_loss() -> None:
    row = window("if x:\n    y = 1\n", length=12)
    short = np.array([FIM_PREFIX, 5, FIM_SUFFIX, 6, FIM_MIDDLE, 7, EOT] + [FIM_PAD] * 5)
    ex = fim.Example(short, np.zeros(12, np.int8), np.zeros(12, np.int64))
    x, y = fim.xy(np.stack([row, row]), [ex, None], GPT2)
    assert x.shape == y.shape == (2, 11)
    assert y[0].tolist() == [5, FIM_SUFFIX, 6, FIM_MIDDLE, 7, EOT] + [fim.IGNORE] * 5
    assert x[0].tolist() == short[:-1].tolist() and y[1].tolist() == row[1:].tolist()
    # and transform pads when re-encoding makes a window shorter than T + 1
    grown = [fim.transform(row, ALWAYS_PSM, fim.window_rng(0, 0, w), GPT2) for w in range(50)]
    assert all(len(e.tokens) == 12 for e in grown if e is not None)


def test_the_psm_prompt() -> None:
    ids = fim.psm_prompt(GPT2, "def f(x):\n    ", "\n    return y\n")
    assert ids[0] == FIM_PREFIX and ids[-1] == FIM_MIDDLE
    assert decode(ids) == "<fim_prefix>def f(x):\n    <fim_suffix>\n    return y\n<fim_middle>"
    assert ids == tokenizer.get().encode_with_specials(decode(ids))  # as an editor templates it


# ------------------------------------------------------------------ the loader


@pytest.fixture(scope="module")
def code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_code_shards(tmp_path_factory.mktemp("code"))


def loader(code: Path, rate: float | None, B: int = 4, **kw: object) -> TrainLoader:
    w = Windows(list_shards(code, "train"), "train", 64, 50304)
    rates = None if rate is None else fim.Rates(rate, 0.5)
    return TrainLoader(w, B, shuffle=True, seed=5, fim_rates=rates, tok=GPT2, **kw)  # type: ignore[arg-type]


def test_fim_rate_0_serves_exactly_the_plain_batches(code: Path) -> None:
    plain, zero = loader(code, None), loader(code, 0.0)
    for _ in range(20):
        for a, b in zip(plain.next_batch(), zero.next_batch(), strict=True):
            assert torch.equal(a, b)


def test_fim_batches_hold_sentinels_and_keep_their_shape(code: Path) -> None:
    dl = loader(code, 0.5)
    xs = [dl.next_batch() for _ in range(10)]
    x = torch.cat([b[0] for b in xs])
    y = torch.cat([b[1] for b in xs])
    assert x.shape == y.shape == (40, 64)
    assert (x == FIM_PREFIX).any() and (x == FIM_MIDDLE).any()
    assert int(x.max()) <= FIM_PAD and int(y.max()) < FIM_PAD  # pads are -1 as targets


def test_two_ranks_serve_what_one_process_serves(code: Path) -> None:
    one = loader(code, 0.5, B=4)
    r0, r1 = (loader(code, 0.5, B=2, rank=r, world_size=2) for r in (0, 1))
    for _ in range(15):
        x, y = one.next_batch()
        (x0, y0), (x1, y1) = r0.next_batch(), r1.next_batch()
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_a_resumed_loader_serves_the_same_fim_batches(code: Path) -> None:
    a = loader(code, 0.5, B=16)
    for _ in range(7):
        a.next_batch()
    b = loader(code, 0.5, B=16)
    b.load_state_dict(a.state_dict())
    for _ in range(60):  # past an epoch boundary: a new order and new draws
        for u, v in zip(a.next_batch(), b.next_batch(), strict=True):
            assert torch.equal(u, v)
    assert a.epoch >= 1


def test_fim_needs_shards_of_gpt2_text(shards: Path, tmp_path: Path) -> None:
    from model.errors import InputError

    cfg = tiny_config(shards, tmp_path, **FIM_ON)
    with pytest.raises(InputError, match=r"tokenizer is 'counting'.*set fim_rate=0"):
        make_loaders(cfg, 0, 1, torch.device("cpu"))


def test_fim_needs_the_sentinels_rows(code: Path, tmp_path: Path) -> None:
    from model.errors import InputError

    cfg = tiny_config(code, tmp_path, vocab_size=50258, fim_rate=0.5)
    with pytest.raises(InputError, match=r"vocab_size=50258; set fim_rate=0 or vocab_size=50304"):
        make_loaders(cfg, 0, 1, torch.device("cpu"))
