"""Offline GPT-2 encoding: known ids, EOT, and a clear error without the vocabulary."""

from __future__ import annotations

import tiktoken

from model import tokenizer


def test_known_ids():
    assert tokenizer.encode("Hello world") == [15496, 995]
    # a bit of code, pinned against GPT-2 (whitespace runs are merged by the pattern)
    assert tokenizer.encode("def f(x):\n    return x") == [
        4299,
        277,
        7,
        87,
        2599,
        198,
        220,
        220,
        220,
        1441,
        2124,
    ]


def test_vocab_and_eot():
    enc = tokenizer.get_encoding()
    assert tokenizer.VOCAB_SIZE == 50257 and enc.n_vocab == tokenizer.N_IDS == 50261
    assert enc.eot_token == tokenizer.EOT == 50256
    # <|endoftext|> inside source text is ordinary text, never the special id
    assert tokenizer.EOT not in tokenizer.encode("x = '<|endoftext|>'")


def test_fim_sentinels_at_their_ids_and_never_in_a_document():
    names = ["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"]
    assert [tokenizer.SPECIAL_TOKENS[n] for n in names] == [50257, 50258, 50259, 50260]
    text = "s = '<fim_prefix>a<fim_suffix>b<fim_middle>'<|endoftext|>"
    plain = tokenizer.encode(text)  # how tokenize encodes every document
    assert max(plain) < tokenizer.EOT and tokenizer.decode(plain) == text
    special = tokenizer.encode_with_specials(text)  # how a templated prompt is encoded
    assert [t for t in special if t >= tokenizer.EOT] == [50257, 50259, 50258, 50256]
    assert tokenizer.decode(special) == text


def test_round_trip_unicode():
    text = "naïve = 'λ' # 日本語 \U0001f600\n\ttabs"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_matches_tiktoken_pattern_constant():
    from tiktoken_ext import openai_public

    assert tokenizer.PAT_STR == openai_public.r50k_pat_str
    assert isinstance(tokenizer.get_encoding(), tiktoken.Encoding)


def test_missing_vocab_is_a_clear_error(tmp_path, monkeypatch):
    import pytest

    from model.errors import InputError

    monkeypatch.setenv("CODEGPT_GPT2_RANKS", str(tmp_path / "none.tiktoken"))
    tokenizer.get_encoding.cache_clear()
    try:
        with pytest.raises(InputError, match="make setup"):
            tokenizer.get_encoding()
    finally:
        monkeypatch.delenv("CODEGPT_GPT2_RANKS")
        tokenizer.get_encoding.cache_clear()
