"""Generation: the KV cache changes nothing but the speed; sampling rules; streamed decoding."""

from __future__ import annotations

import pytest
import torch

from model import tokenizer as _tokenizer
from model.fim import psm_prompt
from model.generate import Sampling, StreamDecoder, generate, generate_batch, next_token
from model.gpt import GPT, GPTConfig
from model.tokenizer import EOT

FIM_PAD = _tokenizer.get().fim_pad  # GPT-2's (the fixtures' tokenizer)
VOCAB_SIZE = _tokenizer.get().n_vocab  # GPT-2's (the fixtures' tokenizer)
decode = _tokenizer.get().decode  # GPT-2's (the fixtures' tokenizer)
encode = _tokenizer.get().encode  # GPT-2's (the fixtures' tokenizer)


GREEDY = Sampling(temperature=0.0)


def tiny_gpt(vocab: int = 512, block: int = 16, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block, vocab_size=vocab))
    with torch.no_grad():  # blocks louder than the 0.02 init: varied tokens, no near-ties
        for name, p in model.named_parameters():
            if p.dim() == 2 and not name.startswith(("transformer.wte", "transformer.wpe")):
                p.mul_(10)
    return model.eval()


def nanogpt_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """The reference: the last block_size tokens through a plain forward, every token."""
    idx = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(idx[:, -model.cfg.block_size :])
            assert logits is not None
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return [int(t) for t in idx[0, len(prompt) :]]


def test_greedy_with_and_without_cache_is_identical_within_the_window() -> None:
    model = tiny_gpt()
    prompt = [3, 1, 4, 1, 5]
    ref = nanogpt_greedy(model, prompt, 10)  # 15 tokens: never cropped
    cached = list(generate(model, prompt, 10, GREEDY, stop_token=None))
    plain = list(generate(model, prompt, 10, GREEDY, stop_token=None, use_cache=False))
    assert cached == plain == ref
    assert len(set(ref)) > 1  # not a degenerate repeat of one token


@pytest.mark.parametrize("keep", [8, 12, 16])
def test_greedy_with_and_without_cache_is_identical_across_crops(keep: int) -> None:
    model = tiny_gpt()
    prompt = list(range(20, 30))
    # 10 + 50 tokens through a 16-token window: several rebuilds of the cache
    cached = list(generate(model, prompt, 50, GREEDY, stop_token=None, keep=keep))
    plain = list(generate(model, prompt, 50, GREEDY, stop_token=None, keep=keep, use_cache=False))
    assert cached == plain and len(cached) == 50
    if keep == 16:  # keep=block_size is nanoGPT's sliding window
        assert cached == nanogpt_greedy(model, prompt, 50)


def test_a_prompt_longer_than_the_window_keeps_its_end() -> None:
    model = tiny_gpt()
    long = list(range(100, 140))
    assert list(generate(model, long, 5, GREEDY, stop_token=None)) == list(
        generate(model, long[-16:], 5, GREEDY, stop_token=None)
    )


def test_stops_at_the_stop_token_without_yielding_it() -> None:
    model = tiny_gpt()
    ref = list(generate(model, [7], 12, GREEDY, stop_token=None))
    cut = next(i for i, t in enumerate(ref) if t not in ref[:i] and i >= 2)
    assert list(generate(model, [7], 12, GREEDY, stop_token=ref[cut])) == ref[:cut]


def test_same_seed_same_tokens_other_seed_other_tokens() -> None:
    model = tiny_gpt()
    s = Sampling(temperature=1.0, top_k=50)

    def draw(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return list(generate(model, [1, 2], 30, s, generator=g, stop_token=None))

    assert draw(5) == draw(5)
    assert draw(5) != draw(6)


def test_temperature_zero_top_k_one_and_tiny_top_p_are_all_greedy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 300, generator=g)
    want = logits.argmax(-1, keepdim=True)
    assert torch.equal(next_token(logits, Sampling(temperature=0)), want)
    for s in (Sampling(temperature=2.0, top_k=1), Sampling(temperature=2.0, top_p=1e-6)):
        for _ in range(5):
            assert torch.equal(next_token(logits, s, g), want)


def test_top_k_and_top_p_only_sample_from_the_kept_set() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    got_k = {int(next_token(logits, Sampling(temperature=1, top_k=2), g)) for _ in range(200)}
    got_p = {int(next_token(logits, Sampling(temperature=1, top_p=0.7), g)) for _ in range(200)}
    assert got_k == {0, 1}
    assert got_p == {0, 1}  # 0.5 < 0.7 so the second is needed; 0.8 >= 0.7 so no third


def test_padded_vocabulary_rows_are_never_sampled() -> None:
    logits = torch.zeros(2, 50304)
    logits[:, VOCAB_SIZE:] = 100.0  # the padding rows are the likeliest by far
    g = torch.Generator().manual_seed(0)
    assert int(next_token(logits, GREEDY, allowed=VOCAB_SIZE).max()) < VOCAB_SIZE
    assert int(next_token(logits, GREEDY).max()) >= VOCAB_SIZE  # allowed=None: every row
    for _ in range(20):
        assert int(next_token(logits, Sampling(temperature=1.0), g, VOCAB_SIZE).max()) < VOCAB_SIZE
    model = tiny_gpt(vocab=50304, block=8)
    with torch.no_grad():
        model.transformer.wte.weight[VOCAB_SIZE:] = model.transformer.wte.weight[:47].mul(5)
    out = list(generate(model, [EOT], 20, Sampling(temperature=1.0), generator=g))
    assert all(t < VOCAB_SIZE for t in out)


def test_a_fim_sample_ends_at_a_sentinel_a_plain_one_never_samples_one() -> None:
    model = tiny_gpt(vocab=50304, block=16)
    prompt = psm_prompt(_tokenizer.get(), "def f(x):\n", "\n    return y\n")[-8:]
    plain = list(generate(model, prompt, 6, GREEDY))
    with torch.no_grad():  # <fim_pad> louder than the greedy choice
        wte = model.transformer.wte.weight
        wte[FIM_PAD] = wte[plain[0]] * 3
    assert list(generate(model, prompt, 6, GREEDY)) == plain  # sentinels masked
    assert list(generate(model, prompt, 6, GREEDY, fim=True)) == []  # ended by <fim_pad>
    batch = generate_batch(model, prompt, 2, 6, GREEDY, fim=True)
    assert batch == [[], []]
    assert generate_batch(model, prompt, 2, 6, GREEDY) == [plain, plain]


def test_stream_decoder_holds_back_split_characters() -> None:
    text = "naïve → 世界 🎉 ok\n"
    ids = encode(text)
    d = StreamDecoder(_tokenizer.get())
    pieces = [d.push(t) for t in ids] + [d.flush()]
    assert "".join(pieces) == text == decode(ids)
    assert all("\ufffd" not in p for p in pieces)
    assert len(ids) > len(text.encode("utf-8")) // 4  # some character spans tokens here
    assert "" in pieces[:-1]  # ... and was held back until it was complete


def test_stream_decoder_replaces_bytes_that_never_form_a_character() -> None:
    enc = _tokenizer.get().encoding
    d = StreamDecoder(_tokenizer.get())
    assert d.push(enc.encode_single_token(b"\xc3")) == ""  # a lead byte: wait for more
    assert d.push(encode("a")[0]) == "\ufffda"  # 'a' cannot continue it
    assert d.push(enc.encode_single_token(b"\xe4")) == ""
    assert d.flush() == "\ufffd"  # cut short at the end


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cached_sampling_on_a_gpu_in_bf16() -> None:
    model = tiny_gpt(vocab=50304, block=32).cuda()

    def autocast() -> torch.autocast:
        return torch.autocast("cuda", dtype=torch.bfloat16)

    g = torch.Generator(device="cuda").manual_seed(0)
    kw = dict(stop_token=None, autocast=autocast, cache_dtype=torch.bfloat16)
    out = list(generate(model, [EOT], 80, Sampling(temperature=1.0), generator=g, **kw))
    assert len(out) == 80 and max(out) < VOCAB_SIZE
    greedy = list(generate(model, [1, 2, 3], 10, GREEDY, **kw))
    assert greedy[:3] == list(generate(model, [1, 2, 3], 3, GREEDY, use_cache=False, **kw))
