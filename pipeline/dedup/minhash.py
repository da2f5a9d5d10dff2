"""MinHash signatures of documents and their LSH band keys, vectorised with numpy.

A document's shingles are its word 5-grams; the Jaccard similarity of two
shingle sets is estimated by the share of equal entries of their MinHash
signatures (Broder 1997), and locality-sensitive hashing groups the
signature into `bands` bands of `rows` values: two documents whose signatures
agree on a whole band share that band's key and become candidates
(Leskovec, Rajaraman and Ullman, "Mining of Massive Datasets", chapter 3).
The chance for a pair of similarity s is 1 - (1 - s^rows)^bands, an S-curve
whose steep part sits near the threshold (1 / bands)^(1 / rows).

Everything runs on whole arrays, no per-word Python loop:

- words: maximal runs of [A-Za-z0-9_] or non-ASCII bytes of the UTF-8 text
  (case-sensitive, as the BigCode near-dedup tokenises code);
- a word's hash: the polynomial hash of its bytes, sum b_j P^j mod 2^64, from
  one prefix sum over the document (each word's is a difference of two prefix
  sums times an inverse power, so it does not depend on where the word is);
- a shingle's hash: the 5 word hashes combined with fixed odd multipliers and
  mixed (splitmix64's finaliser);
- permutation i: x -> a_i x + b_i mod 2^64 with a fixed odd a_i; the signature
  keeps the minimum per permutation, shingles taken a block at a time so a
  1 MB document needs a few MB.

All constants derive from a fixed seed, so a signature is the same in every
process and on every machine. A document with fewer words than the shingle
size has no signature: it is never a near-duplicate candidate (exact dedup
still sees it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SEED = 20230101
BLOCK = 2048  # shingles per block of the (permutations x shingles) product
_P = np.uint64(0x100000001B3)  # an odd base for the polynomial word hash
_P_INV = np.uint64(pow(int(_P), -1, 2**64))
_WORD = np.zeros(256, dtype=bool)
for _c in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_":
    _WORD[_c] = True
_WORD[128:] = True  # bytes of non-ASCII characters belong to words


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the false-positive plus the
    false-negative area around `threshold` (equal weights), by numerical integration."""
    s = np.linspace(0.0, 1.0, 2001)
    best, choice = math.inf, (1, num_perm)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        p = 1.0 - (1.0 - s**rows) ** bands
        fp = np.trapezoid(np.where(s < threshold, p, 0.0), s)
        fn = np.trapezoid(np.where(s >= threshold, 1.0 - p, 0.0), s)
        if fp + fn < best:
            best, choice = fp + fn, (bands, rows)
    return choice


@dataclass(frozen=True)
class Params:
    num_perm: int = 128
    bands: int = 14  # lsh_bands(0.7, 128), the stage's default threshold
    rows: int = 9
    shingle: int = 5

    def __post_init__(self) -> None:
        assert self.bands * self.rows <= self.num_perm and self.shingle >= 1, self

    @property
    def threshold(self) -> float:
        """Where the S-curve is steepest, (1 / bands)^(1 / rows)."""
        return float((1.0 / self.bands) ** (1.0 / self.rows))


class MinHasher:
    def __init__(self, params: Params) -> None:
        self.p = params
        rng = np.random.default_rng(SEED)
        self.a = rng.integers(1, 2**63, params.num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, params.num_perm, dtype=np.uint64)
        self.weights = rng.integers(1, 2**63, params.shingle, dtype=np.uint64) | np.uint64(1)
        self.band_salt = rng.integers(0, 2**63, params.bands, dtype=np.uint64)
        self.row_weights = rng.integers(1, 2**63, params.rows, dtype=np.uint64) | np.uint64(1)
        self._pow = self._inv = np.empty(0, dtype=np.uint64)

    def word_hashes(self, raw: bytes) -> np.ndarray:
        """(n_words,) uint64: the polynomial hash of each word's bytes."""
        arr = np.frombuffer(raw, dtype=np.uint8)
        word = _WORD[arr].astype(np.int8)
        edges = np.diff(word, prepend=np.int8(0), append=np.int8(0))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        if not len(starts):
            return np.empty(0, dtype=np.uint64)
        powers, inverse = self._powers(len(arr))
        with np.errstate(over="ignore"):  # everything here is arithmetic mod 2**64
            terms = arr.astype(np.uint64) * powers[: len(arr)]  # b_j P^j
            prefix = np.concatenate([[np.uint64(0)], np.cumsum(terms, dtype=np.uint64)])
            # word [s, e): (sum_{s<=j<e} b_j P^j) P^-s, the same wherever the word stands
            return _mix((prefix[ends] - prefix[starts]) * inverse[starts])

    def _powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """P^j and P^-j mod 2^64 for j < n, computed once and grown when a longer text comes."""
        if n > len(self._pow):
            size = max(n, 2 * len(self._pow))
            with np.errstate(over="ignore"):
                ones = np.ones(1, dtype=np.uint64)
                self._pow = np.concatenate([ones, np.cumprod(np.full(size - 1, _P))])
                self._inv = np.concatenate([ones, np.cumprod(np.full(size - 1, _P_INV))])
        return self._pow, self._inv

    def signature(self, raw: bytes) -> np.ndarray | None:
        """(num_perm,) uint64 MinHash signature, or None for fewer words than a shingle."""
        w = self.word_hashes(raw)
        k = self.p.shingle
        if len(w) < k:
            return None
        with np.errstate(over="ignore"):
            acc = np.zeros(len(w) - k + 1, dtype=np.uint64)
            for j in range(k):
                acc += w[j : len(w) - k + 1 + j] * self.weights[j]
            shingles = _mix(acc)
            sig = np.full(self.p.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
            for lo in range(0, len(shingles), BLOCK):
                block = shingles[lo : lo + BLOCK]
                hashed = self.a[:, None] * block[None, :] + self.b[:, None]  # (perms, block)
                np.minimum(sig, hashed.min(axis=1), out=sig)
        return sig

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        """(bands,) uint64: one key per band; equal keys mean an equal band (or a 2^-64 clash)."""
        bands = sig[: self.p.bands * self.p.rows].reshape(self.p.bands, self.p.rows)
        with np.errstate(over="ignore"):
            combined = (bands * self.row_weights[None, :]).sum(axis=1, dtype=np.uint64)
            return _mix(combined ^ self.band_salt)


def jaccard(a: bytes, b: bytes, shingle: int = 5) -> float:
    """The exact Jaccard similarity of two documents' shingle sets (for tests and reports)."""
    h = MinHasher(Params(shingle=shingle))
    sets = []
    for raw in (a, b):
        w = h.word_hashes(raw)
        sets.append({tuple(w[i : i + shingle].tolist()) for i in range(len(w) - shingle + 1)})
    union = sets[0] | sets[1]
    return len(sets[0] & sets[1]) / len(union) if union else 1.0
