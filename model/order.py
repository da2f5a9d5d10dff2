"""The order in which training visits the windows of a split: a keyed pseudo-random permutation.

`permute(i, n, seed, epoch)` maps positions i in [0, n) to window indices in
[0, n), a bijection for each (seed, epoch): every window once per epoch, a
different order every epoch, the same order on every machine and for every
number of ranks. Nothing is stored: the permutation is computed for the
indices asked, so 14 B tokens (13.7 M windows of 1024) cost no memory and no
start-up time, where a materialised permutation would be 110 MB of int64
and a shuffle per epoch.

How: a balanced Feistel network over the smallest even number of bits that
holds n (Luby and Rackoff 1988: four rounds of a pseudo-random function make
a pseudo-random permutation; six are used here), with cycle walking (Black
and Rogaway 2002): a value that lands outside [0, n) is enciphered again
until it falls inside, which keeps the map a bijection of [0, n). The domain
is less than 4n, so a value needs fewer than 4 rounds of walking on average.
The round function is splitmix64's finaliser keyed by a blake2b digest of
(seed, epoch, round).
"""

from __future__ import annotations

import hashlib

import numpy as np

ROUNDS = 6
_M1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's multipliers
_M2 = np.uint64(0x94D049BB133111EB)


def _round_keys(seed: int, epoch: int) -> list[np.uint64]:
    keys = []
    for r in range(ROUNDS):
        digest = hashlib.blake2b(f"{seed}/{epoch}/{r}".encode(), digest_size=8).digest()
        keys.append(np.uint64(int.from_bytes(digest, "little")))
    return keys


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """splitmix64's finaliser of x ^ key: every input bit reaches every output bit."""
    z = x ^ key
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _encipher(x: np.ndarray, half: int, keys: list[np.uint64]) -> np.ndarray:
    """One pass of the Feistel network over 2 * half bits."""
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)
    left, right = x >> shift, x & mask
    for key in keys:
        left, right = right, left ^ (_mix(right, key) & mask)
    return (left << shift) | right


def permute(i: np.ndarray | int, n: int, seed: int, epoch: int) -> np.ndarray:
    """The window index at positions `i` (each in [0, n)) of epoch `epoch`'s order."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    idx = np.asarray(i, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"positions must be in [0, {n})")
    bits = max(2, (n - 1).bit_length())
    half = (bits + 1) // 2  # a balanced network: 2 * half >= bits
    keys = _round_keys(seed, epoch)
    x = idx.astype(np.uint64).reshape(-1)
    with np.errstate(over="ignore"):  # the multiplications wrap modulo 2**64 on purpose
        walk = np.ones(x.shape, dtype=bool)
        while walk.any():
            x[walk] = _encipher(x[walk], half, keys)
            walk = x >= np.uint64(n)
    return x.astype(np.int64).reshape(idx.shape)
