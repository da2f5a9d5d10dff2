"""The head's loss in the GPU memory model (model/memory.py, whose docstring gives the
notation): what each loss keeps from its forward for its backward, and its peak beyond.

model/loss.py holds the three losses; the figures here follow what they allocate
(checked against the fake-tensor trace in tests/model/test_memory.py).
"""

from __future__ import annotations

from typing import Protocol

from model.loss import chunked_cross_entropy, dw_block_rows


class Workload(Protocol):
    """What these figures read of model/memory.py's Workload (not imported: it imports us)."""

    @property
    def tokens(self) -> int: ...
    @property
    def n_embd(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def s(self) -> int: ...
    @property
    def chunk(self) -> int: ...
    @property
    def loss(self) -> str: ...
    @property
    def compile(self) -> bool: ...


def compiled_loss_keeps_logits() -> bool:
    """True unless the lean loss is excluded from torch.compile (then it recomputes in backward)."""
    return not getattr(chunked_cross_entropy, "_torchdynamo_disable", False)


def loss_kept_bytes(w: Workload) -> int:
    """What the loss keeps from its forward until its backward."""
    N, C, V, s = w.tokens, w.n_embd, w.vocab_size, w.s
    if w.loss == "plain":
        # log_softmax output in fp32; under autocast F.linear saves the cast hidden and weight
        return 4 * N * V + (s * N * C + s * V * C if s < 4 else 4 * N * C)
    if w.loss == "fused":
        # dL/dh in the hidden's dtype (fp32: ln_f's output) and dL/dW in fp32, + n_valid;
        # not the hidden state: ln_f's output is freed when GPT.forward returns
        return 4 * N * C + 4 * V * C + 8
    kept = 4 * N * C + 4 * N  # fp32 hidden (ln_f output) + logsumexp
    if w.compile and compiled_loss_keeps_logits():
        kept += s * N * V + (s * V * C if s < 4 else 0)
    return kept


def loss_forward_bytes(w: Workload) -> int:
    """The loss forward's transient peak on top of what it keeps: fused only, where its
    train peak is (the lean and plain losses peak in backward; their forward is lower)."""
    N, C, V, s, c = w.tokens, w.n_embd, w.vocab_size, w.s, w.chunk
    if w.loss != "fused":
        return 0
    # the fp32 hidden (alive in GPT.forward while the loss runs) and, under autocast, the
    # weight's cast; per chunk the larger of the matmul's output in s and its fp32 copy (then
    # the fp32 softmax gradient, made in place, and its cast) or that cast and one block of
    # the dW product in s and fp32 (model/loss.py, dw_block_rows)
    if s < 4:
        rows = dw_block_rows(c, V, C)
        chunk = max((s + 4) * c * V, s * c * V + (s + 4) * rows * C)
        return 4 * N * C + s * V * C + chunk + s * c * C
    return 4 * N * C + 4 * c * V + 4 * c * C  # fp32: logits in place, dW by addmm_ in place


def loss_backward_bytes(w: Workload) -> int:
    """The loss backward's transient peak, on top of what it kept."""
    N, C, V, s, c = w.tokens, w.n_embd, w.vocab_size, w.s, w.chunk
    if w.loss == "fused":
        return 0  # the saved gradients are scaled in place and handed on
    if w.loss == "plain":
        return 8 * N * V  # grad of the log-softmax output and its input, fp32
    # weight cast + fp32 dL/dW accumulator + dL/dh, and per chunk the larger of
    # (fp32 logits, logits - lse, softmax) or (softmax, its cast, the (V, C) product + fp32 copy)
    return (s + 4) * V * C + 4 * N * C + max(12 * c * V, (4 + s) * c * V + (s + 4) * V * C)


def loss_transient_bytes(w: Workload) -> int:
    """The loss's peak on top of what it keeps: in its forward (fused) or backward (others)."""
    return max(loss_forward_bytes(w), loss_backward_bytes(w))
