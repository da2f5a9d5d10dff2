"""Text from a trained GPT: sampling with a key/value cache, streamed token by token.

nanoGPT's sample.py re-runs the whole context for every new token (O(T) work
per token for the trunk). Here the prompt is run once to fill a `KVCache`, and
each new token then costs one position: `GPT.forward_cached` attends from it
to the cached keys and values.

The context window. GPT-2's position embeddings are absolute (learned, added
at the input), so every cached key and value depends on its position and a
cache cannot slide by one token: a shifted window means recomputing all of it.
So when the context outgrows `block_size`, it is cropped to its last `keep`
tokens (default `block_size // 2`) and the cache is rebuilt from them in one
batched forward; decoding then goes on one token at a time until the window
is full again. The model therefore always sees at least `keep` tokens of
context, and one rebuild is paid per `block_size - keep` new tokens.
`keep=block_size` is nanoGPT's sliding window (a full re-run every token once
the context is full). Without the cache (`use_cache=False`) the same window
policy is followed with a plain forward of the cropped context per token, so
the two give the same tokens: greedy decoding with and without the cache is
identical (tests/model/test_generate.py).

Ids past the model's tokenizer's vocabulary (50257 for gpt2, 50281 for p50k: the
FIM sentinels and the rows that pad the vocabulary to 50304) are never sampled
by a plain prompt: the decoding head drops those rows, and `next_token` masks
them in any logits it is given. The tokenizer is the one the checkpoint names
(`model.cfg.tokenizer`). Both paths (cache or not) share the same `Head`, so the
benchmark compares the cache alone.
"""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor

from model import tokenizer
from model.gpt import GPT, KVCache
from model.tokenizer import EOT, Tokenizer


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How the next token is picked from the logits."""

    temperature: float = 0.8  # 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p; 1 = all

    def __post_init__(self) -> None:
        assert self.temperature >= 0 and self.top_k >= 0 and 0 < self.top_p <= 1, self


def next_token(
    logits: Tensor,
    s: Sampling,
    generator: torch.Generator | None = None,
    allowed: int | None = None,
) -> Tensor:
    """logits (B, V) -> token ids (B, 1), never an id >= `allowed` (`vocabulary`: the
    tokenizer's own ids, or with the FIM sentinels; None: any of the V)."""
    logits = logits.float().clone()
    if allowed is not None and logits.shape[-1] > allowed:
        logits[:, allowed:] = -torch.inf
    if s.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits /= s.temperature
    if s.top_k and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits[logits < kth] = -torch.inf
    if s.top_p < 1.0:
        # nucleus sampling (Holtzman et al. 2019): drop a token when the tokens
        # more likely than it already hold top_p of the mass; the first always stays.
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # (B, V) mass strictly ahead
        sorted_logits[before >= s.top_p] = -torch.inf
        logits = torch.full_like(logits, -torch.inf).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


PACKED_ROWS = 3  # from this many rows at once the CPU head uses oneDNN (Head._batched)


class Head:
    """The output projection for decoding, (B, C) -> (B, min(V, rows)) logits; `rows` is
    the tokenizer's vocabulary (the default), or `Tokenizer.n_ids` to keep the FIM
    sentinels' rows too.

    On the CPU in fp32 it multiplies by a contiguous (C, V) copy of the tied
    weight: MKL's gemv runs about 4x faster on that layout than on
    nn.Linear's (V, C) (~1 ms against ~4 ms for the demo model's 50304 x 128
    table on 2 cores). Elsewhere it is the model's own `lm_head`. The rows
    past `rows` (padding, never sampled) are dropped either way.
    """

    def __init__(self, model: GPT, rows: int | None = None) -> None:
        rows = model_vocabulary(model, False)[0] if rows is None else rows
        w = model.lm_head.weight
        self.linear, self.rows = model.lm_head, rows
        self.wt: Tensor | None = None
        self._packed: Tensor | None = None  # oneDNN's copy, made at the first batch of rows
        if w.device.type == "cpu" and w.dtype == torch.float32:
            self.wt = w.detach()[:rows].t().contiguous()  # (C, V)

    def __call__(self, h: Tensor) -> Tensor:
        if self.wt is not None and h.dtype == torch.float32:
            if h.shape[0] >= PACKED_ROWS and torch.backends.mkldnn.is_available():
                return self._batched(h)
            return h @ self.wt
        out: Tensor = self.linear(h)[:, : self.rows]
        return out

    def _batched(self, h: Tensor) -> Tensor:
        """(B, C) -> (B, V) by oneDNN's matmul on a packed copy of the head: MKL's gemm on
        3-8 rows of this shape runs at about half its speed (docs/benchmarks.md)."""
        assert self.wt is not None
        if self._packed is None:
            self._packed = self.wt.t().contiguous().to_mkldnn()  # (V, C), oneDNN's layout
        y = torch._C._nn.mkldnn_linear(h.contiguous().to_mkldnn(), self._packed, None)
        out: Tensor = y.to_dense()
        return out


def tokenizer_of(model: GPT) -> Tokenizer:
    """The tokenizer whose ids the model's rows are (its checkpoint's config names it)."""
    return tokenizer.get(model.cfg.tokenizer)


def vocabulary(tok: Tokenizer, fim: bool) -> tuple[int, frozenset[int]]:
    """(ids that may be sampled, ids that end a sample): a fill-in-the-middle prompt may
    end on any sentinel as well as on end-of-text."""
    return (tok.n_ids, tok.fim_stops) if fim else (tok.n_vocab, frozenset({tok.eot}))


def model_vocabulary(model: GPT, fim: bool) -> tuple[int, frozenset[int]]:
    """`vocabulary` of the model's tokenizer. A model trained on a foreign token stream
    (a tokenizer this code does not know, model/tokenizer.py) may draw any of its rows
    as ids, and has no sentinels."""
    if model.cfg.tokenizer in tokenizer.NAMES:
        return vocabulary(tokenizer_of(model), fim)
    if fim:
        tokenizer.spec(model.cfg.tokenizer, "fill in the middle")  # one line: not known
    return model.cfg.vocab_size, frozenset({EOT})


@torch.no_grad()
def generate(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    sampling: Sampling,
    *,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    keep: int | None = None,
    stop_token: int | None = EOT,
    fim: bool = False,
    autocast: Callable[[], AbstractContextManager[object]] | None = None,
    cache_dtype: torch.dtype | None = None,
) -> Iterator[int]:
    """Yield up to `max_new_tokens` new ids after `prompt`; ends early at `stop_token` (not yielded).

    `fim`: a fill-in-the-middle prompt (model/fim.py): any sentinel ends it too. `keep`:
    tokens kept when the context outgrows block_size (module docstring); `autocast`: makes
    the run's mixed-precision context, entered around each forward only; `cache_dtype`:
    the KV cache's dtype (default: the model's).
    """
    if not prompt:
        raise ValueError("empty prompt: start from [EOT]")
    block = model.cfg.block_size
    keep = block // 2 if keep is None else keep
    if not 1 <= keep <= block:
        raise ValueError(f"keep={keep} must be in [1, block_size={block}]")
    device = next(model.parameters()).device
    allowed, stops = model_vocabulary(model, fim)
    stops = stops if fim else frozenset({stop_token} - {None})  # type: ignore[arg-type]
    head = Head(model, allowed)
    ctx = list(prompt[-block:])  # a prompt longer than the window keeps its end
    cache: KVCache | None = None
    fresh = True  # the cache must be (re)built from ctx
    for _ in range(max_new_tokens):
        with autocast() if autocast else contextlib.nullcontext():
            if not use_cache:
                # nanoGPT's way: the whole (cropped) context through the trunk every token
                idx = torch.tensor([ctx], dtype=torch.long, device=device)  # (1, T)
                logits = head(model.hidden(idx)[:, -1, :])  # (1, V)
            else:
                if cache is None:
                    dtype = cache_dtype or next(model.parameters()).dtype
                    cache = KVCache(model.cfg, 1, block, device, dtype)
                if fresh:
                    cache.length = 0  # reuse the buffers; positions restart at 0
                    todo = ctx
                else:
                    todo = ctx[-1:]  # the newest token; the rest is cached
                idx = torch.tensor([todo], dtype=torch.long, device=device)
                logits = head(model.hidden_cached(idx, cache)[:, -1, :])  # (1, V)
                fresh = False
        tok = int(next_token(logits, sampling, generator, allowed).item())
        if tok in stops:
            return
        yield tok
        ctx.append(tok)
        if len(ctx) > block:
            ctx = ctx[-keep:]
            fresh = True


@torch.no_grad()
def generate_batch(
    model: GPT,
    prompt: list[int],
    n: int,
    max_new_tokens: int,
    sampling: Sampling,
    *,
    generator: torch.Generator | None = None,
    done: Callable[[int, list[int]], bool] | None = None,
    fim: bool = False,
    autocast: Callable[[], AbstractContextManager[object]] | None = None,
    cache_dtype: torch.dtype | None = None,
) -> list[list[int]]:
    """`n` samples of one prompt drawn together: one KV cache of batch n, one forward per
    step for all of them. Each sample ends at end-of-text, when `done(i, tokens)` says so
    (e.g. a stop sequence), or after `max_new_tokens`; the batch stops when all have.
    `fim`: a fill-in-the-middle prompt, which a sentinel ends too (as in `generate`).

    No sliding window: the prompt keeps its last `block_size - max_new_tokens` tokens (at
    least half the block), and max_new_tokens shrinks to what then fits.
    """
    block = model.cfg.block_size
    if not prompt:
        raise ValueError("empty prompt: start from [EOT]")
    prompt = prompt[-(block - min(max_new_tokens, block // 2)) :]
    steps = min(max_new_tokens, block - len(prompt))
    device = next(model.parameters()).device
    allowed, stops = model_vocabulary(model, fim)
    head = Head(model, allowed)
    dtype = cache_dtype or next(model.parameters()).dtype
    cache = KVCache(model.cfg, n, len(prompt) + steps, device, dtype)
    out: list[list[int]] = [[] for _ in range(n)]
    live = [True] * n
    idx = torch.tensor([prompt] * n, dtype=torch.long, device=device)  # (n, P)
    for _ in range(steps):
        with autocast() if autocast else contextlib.nullcontext():
            logits = head(model.hidden_cached(idx, cache)[:, -1, :])  # (n, V)
        idx = next_token(logits, sampling, generator, allowed)  # (n, 1)
        for i, tok in enumerate(idx[:, 0].tolist()):
            if not live[i]:
                continue
            if tok in stops:
                live[i] = False
                continue
            out[i].append(tok)
            if done is not None and done(i, out[i]):
                live[i] = False
        if not any(live):
            break
    return out


class StreamDecoder:
    """Token ids -> text, piece by piece, without splitting a multi-byte UTF-8 character.

    One GPT-2 token can hold half of a character (byte-level BPE), so each
    token's bytes go through an incremental UTF-8 decoder that holds back an
    incomplete sequence until the bytes that complete it arrive. Bytes that can
    never form a character become U+FFFD, as `decode` does.
    """

    def __init__(self, tok: Tokenizer) -> None:
        self._enc = tok.encoding
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return str(self._utf8.decode(self._enc.decode_single_token_bytes(token)))

    def flush(self) -> str:
        return str(self._utf8.decode(b"", final=True))
