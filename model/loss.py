"""The memory-lean loss: language-model head + cross-entropy, a chunk of positions at a time.

Why: the plain loss materialises logits of shape (N, V) with N = B*T positions
and V = 50304. For the 124M reference at micro-batch 8 that is 8*1024*50304
fp32 numbers = 1.65 GB for the logits alone, plus their bf16 copy, the softmax
and the gradient of the same size: the story's eval pass ran out of memory on
a 12 GB card because of it. Here the logits of only `chunk` positions exist at
any moment, in the forward pass AND in the backward pass (which recomputes
them), so the loss costs about `chunk * V * 4` bytes (times a small constant
for the softmax and the gradient) instead of `N * V * 4 * k`.

Math (per position i with target t_i, logits z_i = h_i W^T, z_i in R^V):
    loss_i      = logsumexp(z_i) - z_i[t_i]
    dloss/dz_i  = softmax(z_i) - onehot(t_i)
    dL/dh_i     = g_i @ W        dL/dW = sum_i g_i^T h_i
where g_i = (softmax(z_i) - onehot(t_i)) * upstream / n_valid. Positions
whose target is `ignore_index` (-1) contribute nothing and are not counted in
the mean, as with `F.cross_entropy(..., ignore_index=-1)`.

Precision: the matmuls run in the autocast dtype when autocast is on (as the
plain `F.linear` would), the softmax/logsumexp math always in fp32, and
dL/dW is accumulated in fp32 across chunks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -1

# A chunk's fp32 logits are about this many bytes (128 MiB); see auto_chunk.
_CHUNK_LOGIT_BYTES = 128 * 2**20


def auto_chunk(n_positions: int, vocab: int) -> int:
    """Positions per chunk so that one chunk's fp32 logits take about 128 MiB.

    chunk = floor(128 MiB / (4 bytes * vocab)), rounded down to a multiple of
    64 (tidy matmul shapes), at least 1 and at most n_positions. For V = 50304
    that is 640 positions: 640 * 50304 * 4 B = 123 MiB per chunk, and the whole
    loss at its peak holds about 3 such buffers (logits, softmax, gradient in
    the compute dtype), i.e. ~0.4 GB whatever the micro-batch.
    """
    per_position = 4 * max(vocab, 1)
    chunk = _CHUNK_LOGIT_BYTES // per_position
    if chunk >= 64:
        chunk -= chunk % 64
    return max(1, min(chunk, max(n_positions, 1)))


def _compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype a matmul on `t` would run in: the autocast dtype if autocast is on."""
    device_type = t.device.type
    if device_type in ("cuda", "cpu", "xpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return t.dtype


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Cross-entropy of (hidden @ weight.T) without ever holding all the logits."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
        # hidden (N, C), weight (V, C), targets (N,) int64
        cdt = _compute_dtype(hidden)
        n = hidden.shape[0]
        valid = targets != IGNORE_INDEX  # (N,)
        n_valid = valid.sum()  # 0-d tensor: no host sync
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)  # (N,)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cdt)  # (V, C), one cast per call
            for s in range(0, n, chunk):
                e = min(s + chunk, n)
                logits = (hidden[s:e].to(cdt) @ w.T).float()  # (n_c, V) fp32
                lse[s:e] = torch.logsumexp(logits, dim=-1)
                t = targets[s:e].clamp(min=0)  # ignored rows gather index 0, masked below
                picked = logits.gather(1, t[:, None]).squeeze(1)  # (n_c,)
                total += ((lse[s:e] - picked) * valid[s:e]).sum()
        ctx.save_for_backward(hidden, weight, targets, lse, n_valid)
        ctx.chunk = chunk
        ctx.cdt = cdt
        return total / n_valid

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        hidden, weight, targets, lse, n_valid = ctx.saved_tensors
        chunk: int = ctx.chunk
        cdt: torch.dtype = ctx.cdt
        n = hidden.shape[0]
        scale = grad_out.float() / n_valid  # 0-d: d(mean)/d(loss_i)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if ctx.needs_input_grad[1]
            else None
        )
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cdt)  # (V, C)
            for s in range(0, n, chunk):
                e = min(s + chunk, n)
                h = hidden[s:e].to(cdt)  # (n_c, C)
                logits = (h @ w.T).float()  # (n_c, V), recomputed
                g = torch.exp(logits - lse[s:e, None])  # softmax, (n_c, V) fp32
                del logits
                t = targets[s:e]
                valid = t != IGNORE_INDEX
                rows = torch.arange(e - s, device=g.device)
                g[rows, t.clamp(min=0)] -= 1.0  # softmax - onehot
                g *= (valid.float() * scale)[:, None]  # ignored rows -> 0; mean + upstream
                g_c = g.to(cdt)
                del g
                if grad_h is not None:
                    grad_h[s:e] = (g_c @ w).to(hidden.dtype)  # (n_c, C)
                if grad_w is not None:
                    grad_w += (g_c.T @ h).float()  # (V, C), fp32 accumulation
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None


# Left to eager under torch.compile: AOTAutograd's partitioner would otherwise save every
# chunk's logits for backward (B*T*V values, 0.77 GiB in bf16 at micro-batch 8) instead of
# recomputing them, which undoes the point of chunking (model/plan.py checks for this).
@torch.compiler.disable
def chunked_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, a chunk of rows at a time.

    hidden (N, C), weight (V, C), targets (N,) int64 with -1 = ignore. Equals
    `plain_cross_entropy` in value and in the gradients of hidden and weight.
    """
    if hidden.ndim != 2 or weight.ndim != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"expected hidden (N, C), weight (V, C), targets (N,); got "
            f"{tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(targets.shape)}"
        )
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out: Tensor = _ChunkedCrossEntropy.apply(hidden, weight, targets, chunk)
    return out


def plain_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """The reference: full (N, V) logits, then F.cross_entropy (fp32 softmax under autocast)."""
    logits = F.linear(hidden, weight)  # (N, V)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
