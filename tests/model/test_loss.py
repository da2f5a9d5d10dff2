"""The memory-lean chunked loss equals the full-logits loss, in value and gradients."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from model.loss import auto_chunk, chunked_cross_entropy, plain_cross_entropy


def _inputs(n: int = 37, c: int = 16, v: int = 53, seed: int = 0, ignore: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=g, dtype=torch.float64).float().requires_grad_()
    weight = (0.3 * torch.randn(v, c, generator=g)).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    if ignore:
        targets[torch.randperm(n, generator=g)[:ignore]] = -1
    return hidden, weight, targets


def _loss_and_grads(fn, hidden, weight, targets):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    loss = fn(h, w, targets)
    (3.0 * loss).backward()  # a non-unit upstream gradient
    return loss.detach(), h.grad, w.grad


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


def test_matches_torch_cross_entropy_directly():
    hidden, weight, targets = _inputs(ignore=4)
    ref = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, ignore_index=-1)
    torch.testing.assert_close(chunked_cross_entropy(hidden, weight, targets, 6), ref)


def test_bf16_autocast_close_to_plain():
    hidden, weight, targets = _inputs(n=64, c=32, v=101, ignore=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _loss_and_grads(plain_cross_entropy, hidden, weight, targets)
        got = _loss_and_grads(
            lambda h, w, t: chunked_cross_entropy(h, w, t, 10), hidden, weight, targets
        )
    assert got[0].dtype == torch.float32  # softmax math in fp32
    assert got[1].dtype == hidden.dtype and got[2].dtype == weight.dtype
    torch.testing.assert_close(got[0], ref[0], rtol=1e-3, atol=1e-3)
    for a, b in zip(got[1:], ref[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_bad_shapes_are_refused():
    hidden, weight, targets = _inputs()
    with pytest.raises(ValueError, match="expected hidden"):
        chunked_cross_entropy(hidden[None], weight, targets, 4)
    with pytest.raises(ValueError, match="chunk"):
        chunked_cross_entropy(hidden, weight, targets, 0)


def test_auto_chunk():
    assert auto_chunk(8 * 1024, 50304) == 640  # 640 * 50304 * 4 B = 123 MiB of fp32 logits
    assert auto_chunk(100, 50304) == 100  # never more than the positions
    assert auto_chunk(10**6, 10**9) == 1  # never zero
    assert auto_chunk(4096, 96) % 64 == 0


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("lean", [True, False])
def test_logits_exist_one_chunk_at_a_time(lean):
    n, c, v, chunk = 96, 8, 257, 16
    hidden, weight, targets = _inputs(n=n, c=c, v=v)
    with _LargestOutput() as probe:
        if lean:
            loss = chunked_cross_entropy(hidden, weight, targets, chunk)
        else:
            loss = plain_cross_entropy(hidden, weight, targets)
        loss.backward()
    if lean:
        assert probe.largest == chunk * v  # forward and the recomputing backward
    else:
        assert probe.largest == n * v  # what the lean loss avoids


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_matches_plain():
    hidden, weight, targets = (t.cuda() for t in _inputs(n=300, c=64, v=1000, ignore=7))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = _loss_and_grads(plain_cross_entropy, hidden, weight, targets)
        got = _loss_and_grads(
            lambda h, w, t: chunked_cross_entropy(h, w, t, 64), hidden, weight, targets
        )
    torch.testing.assert_close(got[0], ref[0], rtol=1e-3, atol=1e-3)
    for a, b in zip(got[1:], ref[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)
