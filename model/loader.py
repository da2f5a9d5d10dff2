"""What the trainer reads: the data contract, shuffled training windows, a fixed eval set.

Windows (docs/training.md has the long form). A split's shards, concatenated
in order, are one stream of N tokens; window k is the T + 1 tokens from
k * T, cut into x (the first T) and y (the last T, each the token after the
same position of x), for k in [0, W) with W = (N - 1) // T. Consecutive
windows share one token, so each token but the first is a target exactly
once per pass. Shards are memory-mapped and a window reads only its own
span, which may cross a shard boundary.

Training (`TrainLoader`). A single counter, `served`, counts the windows the
ranks have taken together. Position p of the run is window `order(p mod W)`
of epoch p // W, where the order is model.order's keyed permutation of
(seed, epoch) when `shuffle` is on and the stream order when it is off. A
micro-batch of rank r takes positions [served + r * B, served + (r + 1) * B)
and every call advances `served` by world_size * B, so world_size ranks with
grad_accum g / world_size see the same windows per optimizer step as one
rank with g, every window is visited once per epoch (a batch that crosses
the end of an epoch finishes it and starts the next), and the whole state is
`served`: a resumed run serves exactly the batches the original would have.

Evaluation (`EvalSet`): eval_iters x world_size x B windows spread evenly
over the whole val split, the same ones at every eval.

The data contract (the manifest, the tokenizer, the vocabulary) is model/dataset.py's.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from model import fim, tokenizer
from model.dataset import fim_rates, open_dataset
from model.errors import InputError, StateError
from model.order import permute
from model.scoring import Languages
from model.shards import open_shard
from model.tokenizer import Tokenizer

if TYPE_CHECKING:
    from model.train_config import TrainConfig

log = logging.getLogger(__name__)

STATE_FORMAT = 2  # 1: {position, epoch, tokens} in tokens, stream order only
VAL_LANGUAGES = 6  # languages the periodic eval reports on their own (by val tokens; then other)


# ------------------------------------------------------------------ windows of a split


class Windows:
    """The T + 1 token windows of one split's shards, read on demand from memory maps."""

    def __init__(self, paths: list[Path], split: str, block_size: int, vocab_size: int) -> None:
        if not paths:
            raise InputError(
                f"no {split} shards ({split}_000000.npy ...); run `make tokenize` first "
                "(or point `data` at a shard folder)"
            )
        self.paths, self.split = paths, split
        self.T, self.vocab_size = block_size, vocab_size
        self._shards = [open_shard(p) for p in paths]  # memory maps, nothing read yet
        lengths = np.array([len(s) for s in self._shards], dtype=np.int64)
        # _starts[i] = stream offset of shard i's first token; _starts[-1] = total
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        self.tokens = int(self._starts[-1])
        self.count = max(0, (self.tokens - 1) // block_size)  # W

    def read(self, start: int, n: int) -> np.ndarray:
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

    def spread(self, n: int) -> np.ndarray:
        """n window indices evenly over [0, count); with fewer windows some repeat."""
        return (np.arange(n, dtype=np.int64) * self.count) // n

    def targets(self, windows: np.ndarray) -> np.ndarray:
        """(len(windows), T): the stream position of each target (window k's targets are
        tokens k T + 1 .. k T + T)."""
        return windows[:, None] * self.T + 1 + np.arange(self.T)[None, :]

    def rows(self, windows: np.ndarray) -> np.ndarray:
        """(B, T + 1) int64: the tokens of window indices (B,), checked against vocab_size."""
        rows = np.stack([self.read(int(k) * self.T, self.T + 1) for k in windows])  # (B, T + 1)
        if rows.max() >= self.vocab_size:
            self._bad_id(windows, rows)
        return rows

    def batch(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x, y (B, T) int64 for window indices (B,), token ids checked against vocab_size."""
        rows = self.rows(windows)
        return rows[:, :-1], rows[:, 1:]

    def _bad_id(self, windows: np.ndarray, rows: np.ndarray) -> None:
        b, t = np.argwhere(rows >= self.vocab_size)[0]
        at = int(windows[b]) * self.T + int(t)  # stream offset of the bad token
        i = int(np.searchsorted(self._starts, at, side="right")) - 1
        raise InputError(
            f"{self.paths[i]}: token id {int(rows[b, t])} at offset {at - int(self._starts[i]):,} "
            f"is >= vocab_size={self.vocab_size}; the shard is damaged or from another "
            "tokenizer: tokenize again (force=true) or raise vocab_size"
        )


def _to_device(a: np.ndarray, device: torch.device) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    if device.type == "cuda":
        # pinned host memory lets the copy run asynchronously; the caching host
        # allocator keeps the buffer alive until the copy has finished
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class TrainLoader:
    """Shuffled (or stream-order) training batches for one rank; resumable from `served`."""

    def __init__(
        self,
        windows: Windows,
        micro_batch: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        fim_rates: fim.Rates | None = None,
        tok: Tokenizer | None = None,
    ) -> None:
        assert micro_batch >= 1 and 0 <= rank < world_size, (micro_batch, rank, world_size)
        self.windows, self.B = windows, micro_batch
        self.shuffle, self.seed = shuffle, seed
        # FIM examples made from the windows (model/fim.py); None = the windows as they are
        self.fim = fim_rates if fim_rates is not None and fim_rates.rate > 0 else None
        assert self.fim is None or tok is not None, "FIM re-encodes text: pass the shards' tok"
        self.tok = tok
        self._pool: ThreadPoolExecutor | None = None  # makes the next FIM batch ahead
        self._ahead: dict[int, Future[tuple[np.ndarray, np.ndarray]]] = {}
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        if windows.count < world_size * micro_batch:
            raise InputError(
                f"the {windows.split} split has {windows.tokens:,} tokens, fewer than one step "
                f"needs ({world_size} rank(s) x micro_batch {micro_batch} x block_size "
                f"{windows.T} + 1); tokenize more data, lower micro_batch or block_size, "
                "or use fewer GPUs"
            )
        self.served = 0  # windows taken by all ranks together

    @property
    def epoch(self) -> int:
        return self.served // self.windows.count

    def indices(self, start: int, n: int) -> np.ndarray:
        """Window indices at run positions [start, start + n) (they may span two epochs)."""
        return self._place(start, n)[1]

    def _place(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(epoch, window index) of run positions [start, start + n)."""
        pos = np.arange(start, start + n, dtype=np.int64)
        W = self.windows.count
        epoch, i = pos // W, pos % W
        if not self.shuffle:
            return epoch, i
        out = np.empty_like(i)
        for e in np.unique(epoch):
            sel = epoch == e
            out[sel] = permute(i[sel], W, self.seed, int(e))
        return epoch, out

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """x, y: (B, T) int64 on the device; y[b, t] is the token after x[b, t] (-1 where
        a FIM example was padded: no target)."""
        start, step = self.served, self.world_size * self.B
        if self.fim is None:
            x, y = self._make(start)
        else:
            # FIM re-encodes text (~3.7 M tokens/s on one core at fim_rate 0.5, against
            # the 124M step's ~0.4 M tokens/s on an H100): the next batch is made in a
            # thread while this one trains (tiktoken releases the GIL). A batch is a pure
            # function of its position, so one made ahead is the one made on time.
            ahead = self._ahead.pop(start, None)
            x, y = ahead.result() if ahead is not None else self._make(start)
            self._ahead = {start + step: self._worker().submit(self._make, start + step)}
        self.served = start + step
        return _to_device(x, self.device), _to_device(y, self.device)

    def _make(self, served: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's x, y (B, T) for the micro-batch that starts at run position `served`."""
        epochs, ks = self._place(served + self.rank * self.B, self.B)
        if self.fim is None:
            return self.windows.batch(ks)
        rows = self.windows.rows(ks)
        assert self.tok is not None
        examples = [
            fim.transform(row, self.fim, fim.window_rng(self.seed, int(e), int(k)), self.tok)
            for row, e, k in zip(rows, epochs, ks, strict=True)
        ]
        return fim.xy(rows, examples, self.tok)

    def _worker(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="fim-loader")
        return self._pool

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "served": self.served,
            "windows": self.windows.count,
            "shuffle": self.shuffle,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ahead.clear()  # batches made ahead for the old position
        W = self.windows.count
        if state.get("format") != STATE_FORMAT:  # an older checkpoint: stream positions
            self.served = int(state["epoch"]) * W + int(state["position"]) // self.windows.T
            log.warning(
                "checkpoint from an older loader (stream positions); continuing at window %d "
                "of epoch %d in this loader's order",
                self.served % W,
                self.epoch,
            )
            return
        served = int(state["served"])
        if served < 0:
            raise StateError(f"loader state served={served} is negative; the checkpoint is damaged")
        changed = [
            f"{k} {state.get(k)} -> {v}"
            for k, v in (("windows", W), ("shuffle", self.shuffle), ("seed", self.seed))
            if state.get(k) != v
        ]
        if changed:
            log.warning(
                "%s split changed since the checkpoint (%s): resuming after %d windows, but the "
                "batches will differ from the original run's",
                self.windows.split,
                ", ".join(changed),
                served,
            )
        self.served = served


class EvalSet:
    """`iters` batches of fixed windows, spread evenly over the split, split among the ranks."""

    def __init__(
        self,
        windows: Windows,
        micro_batch: int,
        iters: int,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        languages: Languages | None = None,
    ) -> None:
        if windows.count < 1:
            raise InputError(
                f"the {windows.split} split has {windows.tokens:,} tokens, fewer than one window "
                f"of block_size {windows.T} + 1; tokenize more data or lower block_size"
            )
        self.windows, self.B, self.iters = windows, micro_batch, iters
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.all = windows.spread(iters * world_size * micro_batch)
        self.languages = languages or Languages(None)  # one slot: `other`

    def positions(self, i: int) -> np.ndarray:
        """(B, T): the val-stream position of each target of batch i."""
        start = (i * self.world_size + self.rank) * self.B
        return self.windows.targets(self.all[start : start + self.B])

    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        """Batch i (0 <= i < iters) of this rank."""
        start = (i * self.world_size + self.rank) * self.B
        x, y = self.windows.batch(self.all[start : start + self.B])
        return _to_device(x, self.device), _to_device(y, self.device)


def make_loaders(
    cfg: TrainConfig, rank: int, world: int, device: torch.device
) -> tuple[TrainLoader, EvalSet]:
    """The data contract (model/loader.py), then this rank's train loader and the val set."""
    assert isinstance(cfg.micro_batch, int)
    data = open_dataset(cfg.data, cfg.vocab_size, cfg.allow_partial, cfg.tokenizer)
    train = Windows(data.shards["train"], "train", cfg.block_size, cfg.vocab_size)
    val = Windows(data.shards["val"], "val", cfg.block_size, cfg.vocab_size)
    loader = TrainLoader(
        train,
        cfg.micro_batch,
        shuffle=cfg.shuffle,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
        device=device,
        fim_rates=fim_rates(cfg, data),
        tok=tokenizer.get(data.tokenizer) if cfg.fim_rate > 0 else None,
    )
    langs = Languages(data.val_index(), top=VAL_LANGUAGES)
    return loader, EvalSet(val, cfg.micro_batch, cfg.eval_iters, rank, world, device, langs)
