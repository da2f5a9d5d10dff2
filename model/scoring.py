"""Scoring a model on held-out text: per-token losses, per language, and bits per byte.

- `token_losses(model, x, y)`: the cross-entropy in nats at every position,
  (B, T) fp32, a chunk of positions at a time under no_grad, so the (B, T, V)
  logits never exist at once (the same chunking as the training loss).
- `Languages`: which language each position of the val stream belongs to,
  from the val document index (model/shards.py), folded into a fixed list of
  slots (the top languages by val tokens, then `other`).
- `Tally`: per slot, the sum of nats, the target tokens, their UTF-8 bytes
  and the documents. GPT-2's BPE is byte-level, so every token id stands for
  an exact byte string (end-of-text for none): the bytes of a scored stretch
  are the sum of its tokens' byte lengths, and

      bits per byte = sum of nats / ln 2 / sum of bytes

  compares models with different tokenizers (a tokenizer that packs more
  bytes per token has a higher loss per token but not per byte).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from model import tokenizer
from model.gpt import GPT
from model.tokenizer import Tokenizer

OTHER = "other"


def token_bytes(tok: Tokenizer) -> np.ndarray:
    """(65536,) int64, one per uint16 id: the UTF-8 bytes each id of `tok` stands for (0
    for end-of-text, the FIM sentinels and the padding ids past its vocabulary)."""
    return _token_bytes(tok.name)


@functools.cache
def _token_bytes(name: str) -> np.ndarray:
    tok = tokenizer.get(name)
    out = np.zeros(2**16, dtype=np.int64)
    for i in range(tok.n_vocab):
        if i != tok.eot:
            out[i] = len(tok.token_bytes(i))
    return out


@torch.no_grad()
def token_losses(model: GPT, x: Tensor, y: Tensor, chunk: int = 0) -> Tensor:
    """x, y (B, T) -> (B, T) fp32: -log p(y | context) at every position, in nats."""
    _, losses = model(x, y, each=True, chunk=chunk)  # GPT.forward: FSDP's hooks run
    assert losses is not None
    return losses


class Languages:
    """Val-stream positions -> language slots, from the split's document index."""

    def __init__(self, index: np.ndarray | None, top: int | None = None) -> None:
        if index is None or not len(index):  # no index: one slot for everything
            self.names, self.starts = [OTHER], np.zeros(1, dtype=np.int64)
            self.slot, self.first = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=bool)
            self.doc, self.doc_slot = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
            return
        names = [n.decode("utf-8", errors="replace") for n in index["language"]]
        by_tokens: dict[str, int] = {}
        for n, t in zip(names, index["tokens"].tolist(), strict=True):
            by_tokens[n] = by_tokens.get(n, 0) + t
        ranked = sorted(by_tokens, key=lambda n: (-by_tokens[n], n))
        kept = ranked if top is None or len(ranked) <= top else ranked[:top]
        self.names = kept + ([OTHER] if len(kept) < len(ranked) else [])
        slot_of = {n: (kept.index(n) if n in kept else len(kept)) for n in ranked}
        self.starts = index["start"].astype(np.int64)  # one per record, increasing
        self.slot = np.array([slot_of[n] for n in names], dtype=np.int64)
        # a document's first record has its bytes; a continuation (next shard) has 0
        self.first = (index["bytes"] > 0) | (np.arange(len(index)) == 0)
        self.doc = np.cumsum(self.first) - 1  # the document of each record
        self.doc_slot = self.slot[self.first]

    def _record(self, positions: np.ndarray) -> np.ndarray:
        return np.maximum(np.searchsorted(self.starts, positions, side="right") - 1, 0)

    def of(self, positions: np.ndarray) -> np.ndarray:
        """The slot of each val-stream position."""
        return self.slot[self._record(positions)]

    def docs_of(self, positions: np.ndarray) -> np.ndarray:
        """The document (numbered in split order) of each val-stream position."""
        return self.doc[self._record(positions)]


@dataclass
class Tally:
    """Per language slot: nats, target tokens, their UTF-8 bytes, and the documents scored.
    `tok` is the tokenizer of the ids scored (what a token's bytes are)."""

    langs: Languages
    tok: Tokenizer
    nats: np.ndarray = field(init=False)
    tokens: np.ndarray = field(init=False)
    bytes: np.ndarray = field(init=False)
    scored: np.ndarray = field(init=False)  # per document: has a scored token

    def __post_init__(self) -> None:
        k = len(self.langs.names)
        self.nats = np.zeros(k, dtype=np.float64)
        self.tokens, self.bytes = np.zeros(k, np.int64), np.zeros(k, np.int64)
        self.scored = np.zeros(len(self.langs.doc_slot), dtype=bool)

    @property
    def names(self) -> list[str]:
        return self.langs.names

    @property
    def documents(self) -> np.ndarray:
        return np.bincount(self.langs.doc_slot[self.scored], minlength=len(self.names))

    def add(self, losses: np.ndarray, targets: np.ndarray, positions: np.ndarray) -> None:
        """losses (n,) nats of the targets (n,) at val-stream positions (n,)."""
        k = len(self.names)
        slots = self.langs.of(positions)
        self.nats += np.bincount(slots, weights=losses.astype(np.float64), minlength=k)
        self.tokens += np.bincount(slots, minlength=k)
        nbytes = token_bytes(self.tok)[targets]  # every uint16 id
        self.bytes += np.bincount(slots, weights=nbytes, minlength=k).astype(np.int64)
        self.scored[self.langs.docs_of(positions)] = True

    def rows(self) -> Iterator[dict[str, float | int | str]]:
        """One dict per slot, then `all`: documents, tokens, bytes, loss, bits per byte."""
        for i, name in enumerate([*self.names, "all"]):
            sl = slice(None) if name == "all" else slice(i, i + 1)
            nats, tok, b = (
                self.nats[sl].sum(),
                int(self.tokens[sl].sum()),
                int(self.bytes[sl].sum()),
            )
            yield {
                "language": name,
                "documents": int(self.documents[sl].sum()),
                "tokens": tok,
                "bytes": b,
                "loss": float(nats / tok) if tok else math.nan,
                "bits_per_byte": float(nats / math.log(2) / b) if b else math.nan,
            }
