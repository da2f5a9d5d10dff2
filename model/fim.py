"""Fill-in-the-middle: the training transform and the prompt (Bavarian et al. 2022,
"Efficient Training of Language Models to Fill in the Middle", arXiv:2207.14255).

The shards are plain left-to-right text; FIM is made at train time from each
window, so `fim_rate` is a training choice and the same shards serve any rate.
The recipe is the StarCoder trainer's (bigcode Megatron-LM, gpt_dataset.py):

1. Cut the window's T + 1 tokens at `<|endoftext|>` into pieces; each
   end-of-text token stays where it is, between its pieces.
2. Each piece, with probability `rate`, is decoded to text, split at two
   uniformly random character positions into prefix / middle / suffix, each
   part encoded again, and laid out as

       PSM  <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
       SPM  <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle

   SPM with probability `spm_rate` (the paper's "SPM, variant 2": the prefix
   follows the middle sentinel, so the middle continues the prefix as text).
   The other pieces keep their tokens unchanged.
3. The pieces are joined again and the result cut, or padded with
   `<fim_pad>`, back to T + 1 tokens. A padded target is -1 (ignored by the loss).

Every draw comes from a generator keyed by (seed, epoch, window), a pure
function of the window's place in the run: a killed and resumed run, or DDP
ranks that split the windows among them, make the same examples as one
uninterrupted process. Re-encoding can change a piece's length by a token or
two (BPE merges across the cut points differ), which step 3 absorbs.

At inference a PSM prompt is `<fim_prefix> prefix <fim_suffix> suffix
<fim_middle>`; the model writes the middle and ends it with `<|endoftext|>`
(each FIM piece is followed by its document's end-of-text in training).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.tokenizer import Tokenizer

SALT = 0x46494D  # "FIM": keeps this stream apart from the other keyed streams of the run
IGNORE = -1  # the loss's ignore_index (model/loss.py)

# roles of the tokens of a transformed window (`Example.role`)
PLAIN, SENTINEL, PREFIX, MIDDLE, SUFFIX, PAD = range(6)


@dataclass(frozen=True)
class Rates:
    """How often a piece becomes a FIM example, and how often that one is SPM."""

    rate: float = 0.5
    spm_rate: float = 0.5

    def __post_init__(self) -> None:
        assert 0 <= self.rate <= 1 and 0 <= self.spm_rate <= 1, self


@dataclass
class Example:
    """One transformed window: `tokens` (T + 1,) int64; per token its `role` and the
    window offset of the piece it came from (`origin`, for attributing a language)."""

    tokens: np.ndarray
    role: np.ndarray
    origin: np.ndarray


def window_rng(seed: int, epoch: int, window: int) -> np.random.Generator:
    """The generator of one window's FIM draws: a pure function of its place in the run."""
    return np.random.default_rng([SALT, seed, epoch, window])


def psm_prompt(tok: Tokenizer, prefix: str, suffix: str) -> list[int]:
    """The PSM prompt for the text before and after the cursor; the model writes the middle."""
    return [
        tok.fim_prefix,
        *tok.encode(prefix),
        tok.fim_suffix,
        *tok.encode(suffix),
        tok.fim_middle,
    ]


def _pieces(row: np.ndarray, eot: int) -> list[tuple[int, int]]:
    """[start, end) spans of the non-empty runs between end-of-text tokens."""
    cuts = np.flatnonzero(row == eot).tolist()
    spans, start = [], 0
    for c in [*cuts, len(row)]:
        if c > start:
            spans.append((start, c))
        start = c + 1
    return spans


def _split(
    ids: np.ndarray, rng: np.random.Generator, tok: Tokenizer
) -> tuple[list[int], list[int], list[int]]:
    """A piece's tokens -> the tokens of prefix, middle and suffix at two random characters."""
    text = tok.decode(ids.tolist())  # a piece cut mid-character gets U+FFFD
    lo, hi = sorted(rng.integers(0, len(text) + 1, size=2).tolist())
    return tok.encode(text[:lo]), tok.encode(text[lo:hi]), tok.encode(text[hi:])


def _layout(
    parts: tuple[list[int], list[int], list[int]], spm: bool, tok: Tokenizer
) -> list[tuple[list[int], int]]:
    """(tokens, role) runs of one FIM piece, PSM or SPM."""
    prefix, middle, suffix = parts
    if spm:
        return [
            ([tok.fim_prefix, tok.fim_suffix], SENTINEL),
            (suffix, SUFFIX),
            ([tok.fim_middle], SENTINEL),
            (prefix, PREFIX),
            (middle, MIDDLE),
        ]
    return [
        ([tok.fim_prefix], SENTINEL),
        (prefix, PREFIX),
        ([tok.fim_suffix], SENTINEL),
        (suffix, SUFFIX),
        ([tok.fim_middle], SENTINEL),
        (middle, MIDDLE),
    ]


def _in_order(parts: tuple[list[int], list[int], list[int]]) -> list[tuple[list[int], int]]:
    prefix, middle, suffix = parts
    return [(prefix, PREFIX), (middle, MIDDLE), (suffix, SUFFIX)]


def transform(
    row: np.ndarray,
    rates: Rates,
    rng: np.random.Generator,
    tok: Tokenizer,
    left_to_right: bool = False,
) -> Example | None:
    """One window's T + 1 tokens -> its FIM example, or None when no piece was chosen
    (the window is then used exactly as it is). `left_to_right`: the same draws, but each
    chosen piece laid out prefix, middle, suffix without sentinels, so the same middle
    tokens can be scored given the prefix only (make eval's baseline). `tok` is the
    shards' tokenizer: it decodes and re-encodes the pieces and owns the sentinels."""
    n = len(row)
    runs: list[tuple[np.ndarray | list[int], int, int]] = []  # (tokens, role, origin)
    chosen = False
    at = 0
    for start, end in _pieces(row, tok.eot):
        if start > at:  # the end-of-text tokens before this piece
            runs.append((row[at:start], PLAIN, at))
        piece = row[start:end]
        if rng.random() < rates.rate:
            chosen = True
            parts = _split(piece, rng, tok)
            spm = bool(rng.random() < rates.spm_rate)
            layout = _layout(parts, spm, tok) if not left_to_right else _in_order(parts)
            runs.extend((toks, role, start) for toks, role in layout)
        else:
            runs.append((piece, PLAIN, start))
        at = end
    if not chosen:
        return None
    if at < n:
        runs.append((row[at:], PLAIN, at))
    tokens = np.concatenate([np.asarray(t, dtype=np.int64) for t, _, _ in runs])
    role = np.concatenate([np.full(len(t), r, dtype=np.int8) for t, r, _ in runs])
    origin = np.concatenate([np.full(len(t), o, dtype=np.int64) for t, _, o in runs])
    if len(tokens) < n:  # pad back to the window's length
        pad = n - len(tokens)
        tokens = np.concatenate([tokens, np.full(pad, tok.fim_pad, dtype=np.int64)])
        role = np.concatenate([role, np.full(pad, PAD, dtype=np.int8)])
        origin = np.concatenate([origin, np.full(pad, n - 1, dtype=np.int64)])
    return Example(tokens[:n], role[:n], origin[:n])


def xy(
    rows: np.ndarray, examples: list[Example | None], tok: Tokenizer
) -> tuple[np.ndarray, np.ndarray]:
    """(B, T + 1) windows and their examples -> x, y (B, T); a padded target is IGNORE."""
    out = rows.copy()
    for b, ex in enumerate(examples):
        if ex is not None:
            out[b] = ex.tokens
    x, y = out[:, :-1], out[:, 1:].copy()
    y[y == tok.fim_pad] = IGNORE
    return x, y
