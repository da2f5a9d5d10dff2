"""The language-model head + cross-entropy, three ways: fused (the default), lean and plain.

Why: the plain loss materialises logits of shape (N, V) with N = B*T positions
and V = 50304. For the 124M reference at micro-batch 8 that is 8*1024*50304
fp32 numbers = 1.65 GB for the logits alone, plus their bf16 copy, the softmax
and the gradient of the same size: the story's eval pass ran out of memory on
a 12 GB card because of it. The two chunked losses hold the logits of only
`chunk` positions at any moment, so the loss costs about `chunk * V * 4` bytes
(times a small constant for the softmax and the gradient) instead of
`N * V * 4 * k`:

- `fused_cross_entropy` computes, in its forward pass and one chunk at a time,
  the logits, the loss AND the gradients of hidden and weight, and keeps only
  those gradients (N*C + V*C numbers) for backward, which scales them by the
  upstream gradient. Three head matmuls per position, as the plain loss.
- `chunked_cross_entropy` ("lean") keeps the hidden state and the logsumexp and
  recomputes each chunk's logits in backward: four head matmuls per position.
- `plain_cross_entropy`: full logits and F.cross_entropy, the reference.

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


def _check(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> None:
    if hidden.ndim != 2 or weight.ndim != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"expected hidden (N, C), weight (V, C), targets (N,); got "
            f"{tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(targets.shape)}"
        )
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")


# Left to eager under torch.compile: AOTAutograd's partitioner would otherwise save every
# chunk's logits for backward (B*T*V values, 0.77 GiB in bf16 at micro-batch 8) instead of
# recomputing them, which undoes the point of chunking (model/memory.py checks for this).
@torch.compiler.disable
def chunked_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, a chunk of rows at a time.

    hidden (N, C), weight (V, C), targets (N,) int64 with -1 = ignore. Equals
    `plain_cross_entropy` in value and in the gradients of hidden and weight.
    """
    _check(hidden, weight, targets, chunk)
    out: Tensor = _ChunkedCrossEntropy.apply(hidden, weight, targets, chunk)
    return out


def plain_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """The reference: full (N, V) logits, then F.cross_entropy (fp32 softmax under autocast)."""
    logits = F.linear(hidden, weight)  # (N, V)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)


# --- the fused loss: gradients in the forward pass, no recompute --------------------


def dw_block_rows(chunk: int, vocab: int, width: int) -> int:
    """Rows of dL/dW made per product under autocast: (rows, C) in s and fp32 is at most
    half a chunk's logits (chunk * V / 2 numbers), so the dW step never tops the logits."""
    return max(1, min(vocab, chunk * vocab // (2 * width)))


def _add_dw(grad_w: Tensor, g: Tensor, h: Tensor, chunk: int) -> None:
    """grad_w (V, C) += g.T (V, n_c) @ h (n_c, C), accumulated in grad_w's dtype (fp32).

    In fp32 addmm_ writes into grad_w: no temporary. Under autocast the product is made in
    the compute dtype a block of rows at a time and cast explicitly to fp32 before the add
    (the CPU would copy a mixed-dtype input anyway, CUDA casts inside the kernel; explicit,
    both devices allocate the same), so no (V, C) temporary exists.
    """
    if g.dtype == grad_w.dtype:
        grad_w.addmm_(g.T, h)
        return
    V, C = grad_w.shape
    rows = dw_block_rows(chunk, V, C)
    for v in range(0, V, rows):
        grad_w[v : v + rows] += (g[:, v : v + rows].T @ h).to(grad_w.dtype)  # (rows, C)


def _fused_pass(
    hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int, need_h: bool, need_w: bool
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
    """One pass over the chunks: (mean loss, dL/dh * n_valid, dL/dW * n_valid, n_valid).

    The gradients are those of the SUM of the valid positions' losses (the
    caller divides by n_valid): with fp16 a gradient already divided by
    n_valid (~1e4) would underflow in the compute dtype, as it does not in
    the lean loss, whose backward folds the GradScaler's factor in first.
    Per chunk the live set is the fp32 logits (exponentiated and turned into
    the softmax gradient in place) and, under autocast, their cast to the
    compute dtype; no (N, V) buffer ever exists.
    """
    cdt = _compute_dtype(hidden)
    acc = torch.promote_types(cdt, torch.float32)  # the softmax math: fp32 (fp64 for fp64 inputs)
    n = hidden.shape[0]
    valid = targets != IGNORE_INDEX  # (N,)
    n_valid = valid.sum()  # 0-d tensor: no host sync
    total = torch.zeros((), dtype=acc, device=hidden.device)
    grad_h = torch.empty_like(hidden) if need_h else None  # (N, C), hidden's dtype
    grad_w = (  # (V, C), accumulated over the chunks in fp32 (fp64 for fp64 inputs)
        torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
    )
    with torch.autocast(hidden.device.type, enabled=False):
        w = weight.to(cdt)  # (V, C), one cast per call (a no-op in fp32)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            h = hidden[s:e].to(cdt)  # (n_c, C)
            t = targets[s:e].clamp(min=0)[:, None]  # (n_c, 1); ignored rows masked below
            keep = valid[s:e, None].to(acc)  # (n_c, 1): 1 for a counted row, 0 for an ignored one
            z = (h @ w.T).to(acc)  # (n_c, V) fp32 logits
            picked = z.gather(1, t)  # (n_c, 1)
            top = z.amax(dim=1, keepdim=True)  # (n_c, 1)
            z.sub_(top).exp_()  # exp(z - max), in place: no second (n_c, V) buffer
            denom = z.sum(dim=1, keepdim=True)  # (n_c, 1)
            total += ((denom.log() + top - picked) * keep).sum()  # logsumexp - z[t]
            if grad_h is None and grad_w is None:
                del z  # free this chunk's logits before the next chunk's matmul
                continue
            z.mul_(keep / denom)  # softmax; ignored rows -> 0
            z.scatter_add_(1, t, -keep)  # softmax - onehot
            g = z.to(cdt)  # (n_c, V) in the compute dtype (z itself in fp32)
            del z  # under autocast: free the fp32 copy before the (V, C) product
            if grad_h is not None:
                grad_h[s:e] = g @ w  # (n_c, C)
            if grad_w is not None:
                _add_dw(grad_w, g, h, chunk)
            del g
    return total / n_valid, grad_h, grad_w, n_valid


class _FusedCrossEntropy(torch.autograd.Function):
    """Cross-entropy of (hidden @ weight.T) whose gradients are computed in forward."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
        # hidden (N, C), weight (V, C), targets (N,) int64. needs_input_grad says which
        # input wants a gradient (grad mode is on: the wrapper sends no_grad calls around).
        need_h, need_w = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        loss, grad_h, grad_w, n_valid = _fused_pass(hidden, weight, targets, chunk, need_h, need_w)
        # Saved with save_for_backward (not as ctx attributes) so that saved-tensor hooks
        # (the planner's test, activation offloading) see them, and so that the version
        # counter refuses a second backward through the in-place scaling below.
        ctx.save_for_backward(grad_h, grad_w, n_valid)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        grad_h, grad_w, n_valid = ctx.saved_tensors
        # d(mean)/d(loss_i) times the upstream gradient (1/accum, the GradScaler's factor).
        # All targets ignored: the loss is NaN (0/0) and the gradients 0, as F.cross_entropy.
        scale = grad_out / n_valid.clamp(min=1)  # 0-d, the loss's dtype (fp32)
        if grad_h is not None:
            grad_h.mul_(scale)  # in place: the saved buffer becomes the gradient
        if grad_w is not None:
            grad_w = grad_w.mul_(scale).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None


# Left to eager under torch.compile, as the lean loss: the memory figures (model/memory.py)
# and the one-chunk-at-a-time bound are those of this eager loop; traced, the loop would be
# unrolled into one graph whose buffers the compiler schedules and frees as it likes. The
# graph break costs one kernel launch boundary per step. DDP needs nothing special: autograd
# sees ordinary gradients for hidden and weight, arriving when the backward reaches this
# node, so DDP's per-parameter hooks and bucketed all-reduce work as with any other layer.
@torch.compiler.disable
def fused_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, gradients made in forward.

    hidden (N, C), weight (V, C), targets (N,) int64 with -1 = ignore. Equals
    `plain_cross_entropy` in value and in the gradients of hidden and weight;
    all targets ignored gives a NaN loss and zero gradients, as F.cross_entropy.
    Under no_grad (eval) it runs the forward only: no gradient is made or kept.
    """
    _check(hidden, weight, targets, chunk)
    wants = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if not wants:
        return _fused_pass(hidden, weight, targets, chunk, need_h=False, need_w=False)[0]
    out: Tensor = _FusedCrossEntropy.apply(hidden, weight, targets, chunk)
    return out


def head_cross_entropy(
    kind: str, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int
) -> Tensor:
    """The loss named by the config's `loss` key: fused, lean or plain (which ignores chunk)."""
    if kind == "fused":
        return fused_cross_entropy(hidden, weight, targets, chunk)
    if kind == "lean":
        return chunked_cross_entropy(hidden, weight, targets, chunk)
    if kind == "plain":
        return plain_cross_entropy(hidden, weight, targets)
    raise ValueError(f"loss must be fused, lean or plain, got {kind!r}")


def position_losses(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int = 0) -> Tensor:
    """hidden (N, C), targets (N,) -> (N,) fp32: each position's loss in nats, `chunk`
    positions of logits at a time (no (N, V) logits at once; eval and scoring)."""
    N = hidden.shape[0]
    chunk = chunk or auto_chunk(N, weight.shape[0])
    out = torch.empty(N, dtype=torch.float32, device=hidden.device)
    for s in range(0, N, chunk):
        logits = (hidden[s : s + chunk] @ weight.T.to(hidden.dtype)).float()  # (n_c, V)
        picked = logits.gather(1, targets[s : s + chunk, None]).squeeze(1)
        out[s : s + chunk] = torch.logsumexp(logits, dim=-1) - picked
    return out
