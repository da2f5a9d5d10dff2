"""The chunked losses (fused and lean) equal the full-logits loss, in value and gradients."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from model.loss import (
    auto_chunk,
    chunked_cross_entropy,
    dw_block_rows,
    fused_cross_entropy,
    head_cross_entropy,
    plain_cross_entropy,
)


def _inputs(
    n: int = 37, c: int = 16, v: int = 53, seed: int = 0, ignore: int = 0, dtype=torch.float32
):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    weight = (0.3 * torch.randn(v, c, generator=g, dtype=torch.float64)).to(dtype)
    weight.requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    if ignore:
        targets[torch.randperm(n, generator=g)[:ignore]] = -1
    return hidden, weight, targets


def _loss_and_grads(fn, hidden, weight, targets, upstream: float = 3.0):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    loss = fn(h, w, targets)
    (upstream * loss).backward()  # a non-unit upstream gradient
    return loss.detach(), h.grad, w.grad


def _exact(h, w, t):
    """F.cross_entropy on full logits in the inputs' own dtype (fp64 stays fp64)."""
    return torch.nn.functional.cross_entropy(h @ w.T, t, ignore_index=-1)


@pytest.mark.parametrize("chunk", [1, 5, 8, 36, 37, 1000])
@pytest.mark.parametrize("ignore", [0, 9])
def test_chunked_equals_plain_fp32(chunk, ignore):
    hidden, weight, targets = _inputs(ignore=ignore)
    ref = _loss_and_grads(plain_cross_entropy, hidden, weight, targets)
    got = _loss_and_grads(
        lambda h, w, t: chunked_cross_entropy(h, w, t, chunk), hidden, weight, targets
    )
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _fused(chunk):
    return lambda h, w, t: fused_cross_entropy(h, w, t, chunk)


@pytest.mark.parametrize("chunk", [1, 5, 8, 36, 37, 1000])
@pytest.mark.parametrize("ignore", [0, 9])
def test_fused_equals_cross_entropy_fp64(chunk, ignore):
    """In fp64 the fused loss and both its gradients are F.cross_entropy's to rounding."""
    hidden, weight, targets = _inputs(ignore=ignore, dtype=torch.float64)
    ref = _loss_and_grads(_exact, hidden, weight, targets, upstream=3.7)
    got = _loss_and_grads(_fused(chunk), hidden, weight, targets, upstream=3.7)
    assert got[0].dtype == got[1].dtype == got[2].dtype == torch.float64
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 5, 8, 36, 37, 1000])
@pytest.mark.parametrize("ignore", [0, 9])
def test_fused_equals_plain_fp32(chunk, ignore):
    hidden, weight, targets = _inputs(ignore=ignore)
    ref = _loss_and_grads(plain_cross_entropy, hidden, weight, targets, upstream=3.7)
    got = _loss_and_grads(_fused(chunk), hidden, weight, targets, upstream=3.7)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_bf16_autocast_does_the_lean_loss_bf16_matmuls():
    hidden, weight, targets = _inputs(n=64, c=32, v=101, ignore=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _loss_and_grads(_fused(10), hidden, weight, targets)
        lean = _loss_and_grads(
            lambda h, w, t: chunked_cross_entropy(h, w, t, 10), hidden, weight, targets
        )
    for a, b in zip(got, lean, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)


def test_fused_dw_in_row_blocks_under_autocast():
    """Under autocast dL/dW is made a block of rows at a time: several blocks, same result."""
    hidden, weight, targets = _inputs(n=40, c=32, v=301, ignore=3)
    assert dw_block_rows(8, 301, 32) == 37  # 9 blocks, the last one short
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _loss_and_grads(plain_cross_entropy, hidden, weight, targets)
        got = _loss_and_grads(_fused(8), hidden, weight, targets)
    torch.testing.assert_close(got[2], ref[2], rtol=2e-2, atol=2e-3)


def test_fused_gradient_accumulation():
    """Two halves, each loss / 2 with its own backward, add up to the whole batch's grads."""
    hidden, weight, targets = _inputs(n=40)
    ref = _loss_and_grads(plain_cross_entropy, hidden, weight, targets, upstream=1.0)
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    for half in (slice(0, 20), slice(20, 40)):
        (fused_cross_entropy(h[half], w, targets[half], 6) / 2).backward()
    torch.testing.assert_close(h.grad, ref[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w.grad, ref[2], rtol=1e-5, atol=1e-7)


def test_fused_all_targets_ignored_is_nan_with_zero_grads_like_torch():
    hidden, weight, _ = _inputs()
    targets = torch.full((hidden.shape[0],), -1)
    ref = _loss_and_grads(_exact, hidden, weight, targets)
    got = _loss_and_grads(_fused(8), hidden, weight, targets)
    assert torch.isnan(ref[0]) and torch.isnan(got[0])
    for a, b in zip(got[1:], ref[1:], strict=True):
        assert torch.count_nonzero(a) == 0 and torch.count_nonzero(b) == 0


@pytest.mark.parametrize("wanted", ["hidden", "weight"])
def test_fused_only_one_input_needs_grad(wanted):
    hidden, weight, targets = _inputs(ignore=4)
    ref = _loss_and_grads(plain_cross_entropy, hidden, weight, targets)
    h = hidden.detach().clone().requires_grad_(wanted == "hidden")
    w = weight.detach().clone().requires_grad_(wanted == "weight")
    kept: list[tuple[int, ...]] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.shape) or t, lambda t: t):
        loss = fused_cross_entropy(h, w, targets, 8)
    (3.0 * loss).backward()
    if wanted == "hidden":
        assert w.grad is None and tuple(weight.shape) not in kept
        torch.testing.assert_close(h.grad, ref[1], rtol=1e-5, atol=1e-6)
    else:
        assert h.grad is None and tuple(hidden.shape) not in kept
        torch.testing.assert_close(w.grad, ref[2], rtol=1e-5, atol=1e-6)


def test_fused_keeps_only_its_gradients_for_backward():
    """What autograd keeps: dL/dh (N, C), dL/dW (V, C) in fp32 and n_valid; not the inputs."""
    hidden, weight, targets = _inputs(ignore=2)
    kept: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        fused_cross_entropy(hidden, weight, targets, 8)
    assert [(tuple(t.shape), t.dtype) for t in kept] == [
        (tuple(hidden.shape), torch.float32),
        (tuple(weight.shape), torch.float32),
        ((), torch.int64),
    ]


def test_fused_no_grad_makes_no_gradients():
    """Eval: the forward only. No graph, nothing saved, no (N, C) or (V, C) buffer made."""
    n, c, v, chunk = 96, 8, 257, 16
    hidden, weight, targets = _inputs(n=n, c=c, v=v, ignore=3)
    with torch.no_grad(), _Shapes() as probe:
        loss = fused_cross_entropy(hidden, weight, targets, chunk)
    assert loss.grad_fn is None and not loss.requires_grad
    assert (n, c) not in probe.shapes and (v, c) not in probe.shapes
    assert max(probe.numels) == chunk * v  # one chunk's logits, as the lean loss's forward
    with torch.no_grad():
        ref = plain_cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    inputs_without_grad = _inputs(n=n, c=c, v=v)  # grad mode on, nothing requires grad
    h0, w0 = (t.detach() for t in inputs_without_grad[:2])
    with _Shapes() as probe:
        loss = fused_cross_entropy(h0, w0, inputs_without_grad[2], chunk)
    assert loss.grad_fn is None and (v, c) not in probe.shapes


def test_fused_second_backward_is_refused():
    """The saved gradients are scaled in place: a second backward through the same graph
    must fail loudly (autograd's version check), not scale them twice."""
    hidden, weight, targets = _inputs()
    loss = fused_cross_entropy(hidden, weight, targets, 8)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_fused_and_lean_stay_eager_under_compile():
    assert getattr(fused_cross_entropy, "_torchdynamo_disable", False)
    assert getattr(chunked_cross_entropy, "_torchdynamo_disable", False)


def test_head_cross_entropy_dispatches():
    hidden, weight, targets = _inputs(ignore=3)
    ref = plain_cross_entropy(hidden, weight, targets)
    for kind in ("fused", "lean", "plain"):
        torch.testing.assert_close(head_cross_entropy(kind, hidden, weight, targets, 7), ref)
    with pytest.raises(ValueError, match="fused, lean or plain"):
        head_cross_entropy("huge", hidden, weight, targets, 7)


def test_matches_torch_cross_entropy_directly():
    hidden, weight, targets = _inputs(ignore=4)
    ref = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, ignore_index=-1)
    torch.testing.assert_close(chunked_cross_entropy(hidden, weight, targets, 6), ref)


@pytest.mark.parametrize("fn", [chunked_cross_entropy, fused_cross_entropy])
def test_bf16_autocast_close_to_plain(fn):
    hidden, weight, targets = _inputs(n=64, c=32, v=101, ignore=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _loss_and_grads(plain_cross_entropy, hidden, weight, targets)
        got = _loss_and_grads(lambda h, w, t: fn(h, w, t, 10), hidden, weight, targets)
    assert got[0].dtype == torch.float32  # softmax math in fp32
    assert got[1].dtype == hidden.dtype and got[2].dtype == weight.dtype
    torch.testing.assert_close(got[0], ref[0], rtol=1e-3, atol=1e-3)
    for a, b in zip(got[1:], ref[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("fn", [chunked_cross_entropy, fused_cross_entropy])
def test_bad_shapes_are_refused(fn):
    hidden, weight, targets = _inputs()
    with pytest.raises(ValueError, match="expected hidden"):
        fn(hidden[None], weight, targets, 4)
    with pytest.raises(ValueError, match="chunk"):
        fn(hidden, weight, targets, 0)


def test_auto_chunk():
    assert auto_chunk(8 * 1024, 50304) == 640  # 640 * 50304 * 4 B = 123 MiB of fp32 logits
    assert auto_chunk(100, 50304) == 100  # never more than the positions
    assert auto_chunk(10**6, 10**9) == 1  # never zero
    assert auto_chunk(4096, 96) % 64 == 0


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor any op produces (forward and backward alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []
        self.numels: list[int] = [0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
                self.numels.append(t.numel())
        return out


@pytest.mark.parametrize("kind", ["fused", "lean", "plain"])
@pytest.mark.parametrize("autocast", [False, True])
def test_logits_exist_one_chunk_at_a_time(kind, autocast):
    n, c, v, chunk = 96, 8, 257, 16
    hidden, weight, targets = _inputs(n=n, c=c, v=v)
    with _Shapes() as probe, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = head_cross_entropy(kind, hidden, weight, targets, chunk)
        loss.backward()
    if kind == "plain":
        assert max(probe.numels) == n * v  # what the chunked losses avoid
    else:  # fused: its forward alone; lean: forward and the recomputing backward
        assert max(probe.numels) == chunk * v


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["fused", "lean"])
def test_cuda_bf16_matches_plain(kind):
    hidden, weight, targets = (t.cuda() for t in _inputs(n=300, c=64, v=1000, ignore=7))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = _loss_and_grads(plain_cross_entropy, hidden, weight, targets)
        got = _loss_and_grads(
            lambda h, w, t: head_cross_entropy(kind, h, w, t, 64), hidden, weight, targets
        )
    torch.testing.assert_close(got[0], ref[0], rtol=1e-3, atol=1e-3)
    for a, b in zip(got[1:], ref[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)
