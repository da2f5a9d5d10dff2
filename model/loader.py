"""Serves (x, y) training windows from a split's token shards.

Semantics (docs/model.md has the long form):
- Stream: the split's shards, concatenated in order, are one token stream of
  `tokens` tokens. Shards are memory-mapped; a batch reads only its own span,
  which may cross a shard boundary.
- Batch: a span of B*T + 1 consecutive tokens, cut into B rows of T + 1;
  x = row[:-1], y = row[1:] (the next token of each position).
- Ranks: every call advances a shared `position` by world_size * B * T; rank r
  takes the r-th B*T block of that stride. So world_size ranks with grad_accum
  g / world_size see the same tokens per optimizer step as one rank with g.
- Wrap: when the next stride does not fit (position + world_size*B*T + 1 >
  tokens), position goes back to 0 and epoch += 1; the tail is skipped, the
  same way every epoch.
- Resume: state_dict() is {position, epoch, tokens}, plain ints; a loader given
  it serves exactly the batches the original would have served next.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model.errors import InputError, StateError
from model.shards import list_shards, open_shard

log = logging.getLogger(__name__)


class ShardLoader:
    def __init__(
        self,
        folder: str | Path,
        split: str,
        micro_batch: int,
        block_size: int,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
    ) -> None:
        assert micro_batch >= 1 and block_size >= 1, (micro_batch, block_size)
        assert 0 <= rank < world_size, (rank, world_size)
        self.folder = Path(folder)
        self.split = split
        self.B, self.T = micro_batch, block_size
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self._pin = self.device.type == "cuda"
        paths = list_shards(self.folder, split)
        if not paths:
            raise InputError(
                f"{self.folder}: no {split} shards ({split}_000000.npy ...); "
                "run `make tokenize` first (or point `data` at a shard folder)"
            )
        self._shards = [open_shard(p) for p in paths]  # memory maps, nothing read yet
        lengths = np.array([len(s) for s in self._shards], dtype=np.int64)
        # _starts[i] = stream offset of shard i's first token; _starts[-1] = total
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        self.tokens = int(self._starts[-1])
        self._stride = world_size * self.B * self.T
        need = self._stride + 1
        if self.tokens < need:
            raise InputError(
                f"{self.folder}: the {split} split has {self.tokens:,} tokens, fewer than the "
                f"{need:,} one step needs (micro_batch {self.B} x block_size {self.T} x "
                f"{world_size} rank(s) + 1); tokenize more data, lower micro_batch or "
                "block_size, or use fewer GPUs"
            )
        self.position = 0
        self.epoch = 0

    def _read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) of the stream as int64, copying only that span."""
        out = np.empty(n, dtype=np.int64)
        i = int(np.searchsorted(self._starts, start, side="right")) - 1  # shard holding `start`
        done = 0
        while done < n:
            lo = start + done - int(self._starts[i])  # offset inside shard i
            take = min(n - done, len(self._shards[i]) - lo)
            out[done : done + take] = self._shards[i][lo : lo + take]
            done += take
            i += 1
        return out

    def _to_device(self, a: np.ndarray) -> Tensor:
        t = torch.from_numpy(a)
        if self._pin:
            # pinned host memory lets the copy run asynchronously; the caching host
            # allocator keeps the buffer alive until the copy has finished
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """x, y: (B, T) int64 on the device; y[b, t] is the token after x[b, t]."""
        if self.position + self._stride + 1 > self.tokens:
            self.position = 0
            self.epoch += 1
        start = self.position + self.rank * self.B * self.T
        span = self._read(start, self.B * self.T + 1)  # (B*T + 1,)
        x = span[:-1].reshape(self.B, self.T)
        y = span[1:].reshape(self.B, self.T)
        self.position += self._stride
        return self._to_device(x), self._to_device(y)

    def reset(self) -> None:
        """Back to the start of the stream (a fixed validation set reads the same batches)."""
        self.position = 0
        self.epoch = 0

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "epoch": self.epoch, "tokens": self.tokens}

    def load_state_dict(self, state: dict[str, int]) -> None:
        position, epoch = int(state["position"]), int(state["epoch"])
        if not 0 <= position <= self.tokens or epoch < 0:
            raise StateError(
                f"{self.folder}: loader state position={position} epoch={epoch} does not fit the "
                f"{self.split} split ({self.tokens:,} tokens); the shards changed since the "
                "checkpoint: restore them or start a new run (another out_dir)"
            )
        saved = state.get("tokens")
        if saved is not None and int(saved) != self.tokens:
            log.warning(
                "%s: the %s split has %d tokens, the checkpoint saw %d; resuming at position "
                "%d, but the batches will differ from the original run's",
                self.folder,
                self.split,
                self.tokens,
                int(saved),
                position,
            )
        self.position, self.epoch = position, epoch
