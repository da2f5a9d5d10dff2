"""GPT-2 (Radford et al. 2019), as a small stack of readable parts.

Token + learned position embeddings -> n_layer pre-LayerNorm blocks
(x + attn(ln(x)), x + mlp(ln(x))) -> final LayerNorm -> a head that shares its
weight with the token embedding. Attention goes through
`F.scaled_dot_product_attention` (flash kernels on GPU). Initialisation is
GPT-2's: N(0, 0.02) weights, zero biases, and the residual projections
(`c_proj`) scaled by 1/sqrt(2 * n_layer) because each block adds two of them
to the residual stream (GPT-2 paper, section 2.3).

Shapes: B batch, T time, C = n_embd, nh = n_head, hs = C / nh, V = vocab_size.
The training loss (fused or lean) never holds the (B, T, V) logits: see model/loss.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from model import optim
from model.loss import auto_chunk, head_cross_entropy, position_losses
from model.optim import Optimizers
from model.train_config import Loss, Optimizer


class ModelShape(Protocol):
    """What a config needs to name a model: TrainConfig, the planner's Workload, ..."""

    @property
    def n_layer(self) -> int: ...
    @property
    def n_head(self) -> int: ...
    @property
    def n_embd(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def dropout(self) -> float: ...
    @property
    def loss(self) -> Loss: ...
    @property
    def loss_chunk(self) -> int: ...
    @property
    def activation_checkpointing(self) -> str: ...  # none | full (auto: resolved before)


@dataclass(kw_only=True)
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024  # longest context, rows of the position table
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for fast matmuls
    dropout: float = 0.0
    loss: Loss = "fused"  # the training loss: fused | lean | plain (model/loss.py)
    loss_chunk: int = 0  # positions per chunk of the fused and lean losses; 0 = auto_chunk
    # recompute each block in backward instead of keeping its activations (training only)
    checkpoint_blocks: bool = False
    # whose ids the rows are (model/tokenizer.py): what sampling, serving and export decode
    # with; the checkpoint's config names it
    tokenizer: str = "gpt2"

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.loss not in ("fused", "lean", "plain"):
            raise ValueError(f"loss must be fused, lean or plain, got {self.loss!r}")

    @classmethod
    def from_train(cls, cfg: ModelShape) -> GPTConfig:
        return cls(
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.n_embd,
            block_size=cfg.block_size,
            vocab_size=cfg.vocab_size,
            dropout=cfg.dropout,
            loss=cfg.loss,
            loss_chunk=cfg.loss_chunk,
            # `auto` is resolved before a model is built (model/autobatch.py); unresolved, none
            checkpoint_blocks=cfg.activation_checkpointing == "full",
            # `auto` is resolved from the shards before a run's model is built; a shape
            # for the planner or a benchmark has none: GPT-2's
            tokenizer={"auto": "gpt2"}.get(t := getattr(cfg, "tokenizer", "auto"), t),
        )


class KVCache:
    """Keys and values of the positions seen so far, per layer, for incremental decoding.

    `k[i]`, `v[i]`: (B, nh, max_len, hs), preallocated; positions [0, length)
    are filled. `GPT.forward_cached` writes the new positions and advances
    `length`.
    """

    def __init__(
        self,
        cfg: GPTConfig,
        batch: int,
        max_len: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        if not 1 <= max_len <= cfg.block_size:
            raise ValueError(f"max_len={max_len} must be in [1, block_size={cfg.block_size}]")
        shape = (batch, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.max_len = max_len
        self.length = 0

    def row(self, i: int) -> KVCache:
        """Row i as a batch-1 cache over the same storage (views, length 0): a prefill
        through it fills row i of this cache (model/engine.py's slots)."""
        view = object.__new__(KVCache)
        view.k = [t[i : i + 1] for t in self.k]
        view.v = [t[i : i + 1] for t in self.v]
        view.max_len, view.length = self.max_len, 0
        return view


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)  # residual projection
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.dropout = cfg.dropout

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        return q, k, v

    def _merge(self, y: Tensor) -> Tensor:
        B, _, T, _ = y.shape
        y = y.transpose(1, 2).contiguous().view(B, T, -1)  # (B, nh, T, hs) -> (B, T, C)
        out: Tensor = self.resid_drop(self.c_proj(y))
        return out

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._heads(x)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hs)
        return self._merge(y)

    def forward_cached(self, x: Tensor, cache: KVCache, layer: int) -> Tensor:
        """x (B, T_new, C) at positions [L, L + T_new), L = cache.length."""
        q, k, v = self._heads(x)
        L, T = cache.length, x.shape[1]
        cache.k[layer][:, :, L : L + T] = k
        cache.v[layer][:, :, L : L + T] = v
        keys = cache.k[layer][:, :, : L + T].to(q.dtype)  # (B, nh, L + T, hs)
        vals = cache.v[layer][:, :, : L + T].to(q.dtype)
        if L == 0:
            y = F.scaled_dot_product_attention(q, keys, vals, is_causal=True)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, keys, vals)  # one query sees every key
        else:
            # SDPA's is_causal aligns the mask top-left; new queries sit at the bottom
            # right: query i (position L + i) may see keys j <= L + i.
            mask = torch.arange(L + T, device=x.device)[None, :] <= (
                L + torch.arange(T, device=x.device)[:, None]
            )  # (T, L + T) bool
            y = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask)
        return self._merge(y)

    def forward_rows(self, x: Tensor, cache: KVCache, layer: int, rows: Rows) -> Tensor:
        """x (A, 1, C): one new token for each of cache rows [0, A), row i at its own
        position rows.pos[i]; row i attends to its own keys [0, rows.pos[i]]."""
        q, k, v = self._heads(x)  # (A, nh, 1, hs)
        A = x.shape[0]
        if rows.mask is None:  # every row at position span - 1: a plain slice
            cache.k[layer][:A, :, rows.span - 1 : rows.span] = k
            cache.v[layer][:A, :, rows.span - 1 : rows.span] = v
        else:  # advanced indices on dims 0 and 2: the (A, nh, hs) entries (i, :, pos[i], :)
            index = torch.arange(A, device=x.device)
            cache.k[layer][index, :, rows.pos] = k[:, :, 0]
            cache.v[layer][index, :, rows.pos] = v[:, :, 0]
        keys = cache.k[layer][:A, :, : rows.span].to(q.dtype)  # (A, nh, span, hs)
        vals = cache.v[layer][:A, :, : rows.span].to(q.dtype)
        # rows.mask (A, 1, 1, span) hides the keys past each row's own position; None when
        # every row is at the same position: then this is forward_cached's T == 1 case
        y = F.scaled_dot_product_attention(q, keys, vals, attn_mask=rows.mask)
        return self._merge(y)


@dataclass(frozen=True)
class Rows:
    """Where each row of a ragged decode step writes: `pos` (A,) its position, `span` the
    keys any row sees (max(pos) + 1), `mask` (A, 1, 1, span) or None when all are equal."""

    pos: Tensor
    span: int
    mask: Tensor | None

    @classmethod
    def at(cls, positions: list[int], device: torch.device) -> Rows:
        pos = torch.tensor(positions, dtype=torch.long, device=device)
        span = max(positions) + 1
        mask = None
        if min(positions) != span - 1:
            mask = (torch.arange(span, device=device)[None, :] <= pos[:, None])[:, None, None]
        return cls(pos, span, mask)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 used the tanh approximation
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)  # residual projection
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.drop(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)
        return out


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))  # pre-LN: the residual stream itself is never normalised
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x: Tensor, cache: KVCache, layer: int) -> Tensor:
        x = x + self.attn.forward_cached(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))

    def forward_rows(self, x: Tensor, cache: KVCache, layer: int, rows: Rows) -> Tensor:
        x = x + self.attn.forward_rows(self.ln_1(x), cache, layer, rows)
        return x + self.mlp(self.ln_2(x))


class Trunk(nn.Module):
    """Everything but the head; named `transformer` in GPT so state-dict keys read as GPT-2's."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # (V, C)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)  # (block_size, C)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = Trunk(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017; GPT-2): one (V, C) tensor is both the
        # input embedding and the output projection.
        self.lm_head.weight = self.transformer.wte.weight
        self._init_weights()

    def _init_weights(self) -> None:
        std_resid = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if m is self.lm_head:
                    continue  # its weight is wte's, initialised below
                std = std_resid if name.endswith("c_proj") else 0.02
                nn.init.normal_(m.weight, mean=0.0, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            # LayerNorm keeps its defaults: weight 1, bias 0

    def _embed(self, idx: Tensor, start: int) -> Tensor:
        T = idx.shape[1]
        if start + T > self.cfg.block_size:
            raise ValueError(
                f"positions up to {start + T} exceed block_size={self.cfg.block_size}; "
                "crop the context"
            )
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C) + (T, C)
        out: Tensor = self.transformer.drop(x)
        return out

    def hidden(self, idx: Tensor) -> Tensor:
        """idx (B, T) int64 -> (B, T, C), after the final LayerNorm.

        With `checkpoint_blocks`, while training with gradients, each block keeps only its
        input and runs its forward again in backward (torch.utils.checkpoint, non-reentrant,
        the RNG state replayed so dropout draws the same mask): activation memory of one
        block instead of all, for about a third more compute in the blocks.
        """
        x = self._embed(idx, 0)
        recompute = self.cfg.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for block in self.transformer.h:
            if recompute:
                x = cast(Tensor, checkpoint(block, x, use_reentrant=False))
            else:
                x = block(x)  # (B, T, C)
        out: Tensor = self.transformer.ln_f(x)
        return out

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, *, each: bool = False, chunk: int = 0
    ) -> tuple[Tensor | None, Tensor | None]:
        """With targets (B, T): (None, mean loss) via cfg.loss, or with `each` (None, every
        position's loss (B, T) fp32, `chunk` positions of logits at a time: eval, and the
        only way under FSDP, whose hooks gather the weights around forward). Without
        targets: (logits (B, T, V), None)."""
        h = self.hidden(idx)  # (B, T, C)
        if each:
            assert targets is not None, "each=True scores targets"
            B, T, C = h.shape
            losses = position_losses(
                h.reshape(B * T, C), self.lm_head.weight, targets.reshape(-1), chunk
            )
            return None, losses.view(B, T)
        if targets is None:
            return self.lm_head(h), None
        B, T, C = h.shape
        chunk = self.cfg.loss_chunk or auto_chunk(B * T, self.cfg.vocab_size)
        loss = head_cross_entropy(
            self.cfg.loss, h.reshape(B * T, C), self.lm_head.weight, targets.reshape(-1), chunk
        )
        return None, loss

    def hidden_cached(self, idx: Tensor, cache: KVCache) -> Tensor:
        """idx (B, T_new) continuing at position cache.length -> (B, T_new, C) after ln_f."""
        L, T = cache.length, idx.shape[1]
        if L + T > cache.max_len:
            raise ValueError(f"cache holds {cache.max_len} positions; {L} used, {T} more asked")
        x = self._embed(idx, L)
        for i, block in enumerate(self.transformer.h):
            x = cast(Block, block).forward_cached(x, cache, i)  # (B, T_new, C)
        cache.length = L + T
        out: Tensor = self.transformer.ln_f(x)
        return out

    def forward_cached(self, idx: Tensor, cache: KVCache) -> Tensor:
        """idx (B, T_new) continuing at position cache.length -> logits (B, T_new, V)."""
        logits: Tensor = self.lm_head(self.hidden_cached(idx, cache))
        return logits

    def hidden_rows(self, idx: Tensor, cache: KVCache, positions: list[int]) -> Tensor:
        """idx (A, 1): the next token of each of cache rows [0, A), row i at position
        positions[i] (rows of different lengths in one forward: continuous batching,
        model/engine.py) -> (A, 1, C) after ln_f. cache.length is not used."""
        if max(positions) >= cache.max_len:
            raise ValueError(f"cache holds {cache.max_len} positions; {max(positions)} asked")
        rows = Rows.at(positions, idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(rows.pos)[:, None, :]  # (A, 1, C)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = cast(Block, block).forward_rows(x, cache, i, rows)  # (A, 1, C)
        out: Tensor = self.transformer.ln_f(x)
        return out

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, the tied wte/lm_head weight counted once.

        non_embedding=True drops the position table (wpe) but keeps wte, as
        nanoGPT and the scaling-law papers do: wte is also the output head.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def configure_optimizer(
        self,
        weight_decay: float,
        lr: float,
        betas: tuple[float, float],
        device_type: str,
        kind: Optimizer,
        sharded: bool = False,
    ) -> torch.optim.Optimizer | Optimizers:
        """AdamW (weight decay on matrices and embeddings, none on biases and LayerNorms), or
        Muon for the blocks' matrices and AdamW for the rest (model/optim.py); `sharded`
        for weights that FSDP2 shards (model/fsdp.py)."""
        return optim.build(self, kind, lr, weight_decay, betas, device_type, sharded)
