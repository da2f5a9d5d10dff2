"""The offline tokenizers: GPT-2's and Codex's p50k, their ids, their records, their errors."""

from __future__ import annotations

import hashlib
import re
import sysconfig
from pathlib import Path

import pytest
import tiktoken

from model import tokenizer
from model.errors import InputError

GPT2, P50K = tokenizer.get("gpt2"), tokenizer.get("p50k")
SENTINELS = ["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"]


def code_texts(n: int = 40) -> list[str]:
    """Real Python (this interpreter's standard library) and a few hand-made edge cases."""
    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:n]
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in paths]
    texts += [
        " " * 100 + "x",  # a run longer than p50k's longest (25)
        "a" + " " * 26 + "b\n" + "\t\t  \t" + " " * 7 + "\n",
        "def f():\n" + "".join(" " * k + "pass\n" for k in range(30)),
        " " * 25,  # a run at the end of the text
        "naïve = 'λ'  # 日本語 \U0001f600\n",
    ]
    return texts


def test_known_ids():
    assert GPT2.encode("Hello world") == [15496, 995]
    # a bit of code, pinned against GPT-2: three lone spaces for an indent of four
    want = [4299, 277, 7, 87, 2599, 198, 220, 220, 220, 1441, 2124]
    assert GPT2.encode("def f(x):\n    return x") == want
    # p50k: the three spaces are one token (a run of 3 is 50255 + 3), the rest GPT-2's
    assert P50K.encode("def f(x):\n    return x") == [*want[:6], 50258, *want[9:]]


def test_each_tokenizer_has_its_ids_and_sentinels():
    assert (GPT2.n_vocab, GPT2.n_ids, P50K.n_vocab, P50K.n_ids) == (50257, 50261, 50281, 50285)
    assert GPT2.eot == P50K.eot == 50256 and GPT2.encoding.eot_token == 50256
    assert [GPT2.special_tokens[n] for n in SENTINELS] == [50257, 50258, 50259, 50260]
    # p50k's just above its vocabulary, prefix-middle-suffix as OpenAI's p50k_edit, then pad
    assert [P50K.special_tokens[n] for n in SENTINELS] == [50281, 50282, 50283, 50284]
    assert GPT2.encoding.n_vocab == GPT2.n_ids and P50K.encoding.n_vocab == P50K.n_ids
    assert tokenizer.get("p50k") is P50K  # built once per process


@pytest.mark.parametrize("tok", [GPT2, P50K], ids=["gpt2", "p50k"])
def test_sentinels_are_text_in_a_document_and_ids_in_a_prompt(tok):
    text = "s = '<fim_prefix>a<fim_suffix>b<fim_middle>'<|endoftext|>"
    plain = tok.encode(text)  # how tokenize encodes every document
    assert max(plain) < tok.eot and tok.decode(plain) == text
    special = tok.encode_with_specials(text)  # how a templated prompt is encoded
    assert [t for t in special if t in tok.special_tokens.values()] == [
        tok.fim_prefix,
        tok.fim_suffix,
        tok.fim_middle,
        tok.eot,
    ]
    assert tok.decode(special) == text


@pytest.mark.parametrize("tok", [GPT2, P50K], ids=["gpt2", "p50k"])
def test_round_trip(tok):
    for text in code_texts(10):
        assert tok.decode(tok.encode(text)) == text


def test_p50k_is_tiktokens_own_p50k_base(tmp_path, monkeypatch):
    """tiktoken's published definition (tiktoken_ext.openai_public.p50k_base: its URL, its
    expected sha256, the r50k pattern, 50281 ids), fed our ranks file through tiktoken's own
    cache: tiktoken checks the hash itself (a wrong file would be fetched again, and this
    box has no network), and its encoding must equal ours on real code."""
    from tiktoken_ext import openai_public

    url = "https://openaipublic.blob.core.windows.net/encodings/p50k_base.tiktoken"
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(
        tokenizer.ranks_path("p50k").read_bytes()
    )
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    theirs = tiktoken.Encoding(**openai_public.p50k_base())
    assert theirs.n_vocab == P50K.n_vocab == 50281
    assert tokenizer.PAT_STR == openai_public.r50k_pat_str
    texts = code_texts()
    assert all(P50K.encode(t) == theirs.encode_ordinary(t) for t in texts)
    assert sum(len(P50K.encode(t)) for t in texts) < 0.8 * sum(len(GPT2.encode(t)) for t in texts)


def test_p50k_equals_gpt2_where_no_two_spaces_meet():
    texts = [re.sub(" {2,}", " ", t) for t in code_texts()]  # tabs and newlines kept
    assert len(texts) > 40 and not any("  " in t for t in texts)
    assert all(P50K.encode(t) == GPT2.encode(t) for t in texts)


def test_the_p50k_file_is_gpt2s_and_the_space_runs():
    made = tokenizer.p50k_ranks(tokenizer.ranks_path("gpt2").read_bytes())
    assert hashlib.sha256(made).hexdigest() == tokenizer.SPECS["p50k"].sha256
    assert made == tokenizer.ranks_path("p50k").read_bytes()


@pytest.mark.parametrize("name", ["gpt2", "p50k"])
def test_a_missing_or_wrong_ranks_file_is_one_line(name, tmp_path, monkeypatch):
    env = tokenizer.SPECS[name].env
    monkeypatch.setenv(env, str(tmp_path / "none.tiktoken"))
    tokenizer.get.cache_clear()
    try:
        with pytest.raises(InputError, match=f"{name} vocabulary .* is missing; run `make setup`"):
            tokenizer.get(name)
        wrong = tmp_path / "wrong.tiktoken"
        # gpt2's file where p50k's should be (and p50k's for gpt2): the hash tells them apart
        other = "p50k" if name == "gpt2" else "gpt2"
        wrong.write_bytes(tokenizer.ASSETS.joinpath(tokenizer.SPECS[other].file).read_bytes())
        monkeypatch.setenv(env, str(wrong))
        with pytest.raises(InputError, match=rf"has sha256 .*expected .*\({name}'s own\)"):
            tokenizer.get(name)
    finally:
        monkeypatch.delenv(env)
        tokenizer.get.cache_clear()


def test_records():
    assert GPT2.record() == {
        "name": "gpt2",
        "vocab_sha256": tokenizer.SPECS["gpt2"].sha256,
        "n_vocab": 50257,
        "special_tokens": GPT2.special_tokens,
    }
    assert tokenizer.check_record(P50K.record(), "m.json") == "p50k"
    assert tokenizer.check_record({}, "m.json") == "gpt2"  # a manifest from before the field
    assert tokenizer.check_record(None, "m.json") == "gpt2"
    assert tokenizer.check_record({"name": "counting", "n_vocab": 200}, "m") == "counting"
    bad = [
        ({"name": "bpe32k"}, r"m.json: tokenizer 'bpe32k' is not one this code knows"),
        ({**P50K.record(), "vocab_sha256": GPT2.sha256}, "another p50k vocabulary file"),
        ({**P50K.record(), "n_vocab": 50257}, "p50k with 50257 ids"),
        ({**P50K.record(), "special_tokens": GPT2.special_tokens}, "other special tokens"),
    ]
    for record, message in bad:
        with pytest.raises(InputError, match=message):
            tokenizer.check_record(record, "m.json")
