"""The GPT-2 network: shapes, tying, init loss, overfitting, parameter count, cached decoding."""

from __future__ import annotations

import math

import pytest
import torch

from model.generate import Head
from model.gpt import GPT, GPTConfig, KVCache
from model.train_config import TrainConfig

TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=96)

# GPT-2 124M with the vocabulary padded to 50304 (configs/gpt2-124m.yaml); also in docs/model.md.
PARAMS_124M = 124_475_904
PARAMS_124M_NON_EMBEDDING = 123_689_472  # minus wpe (1024 x 768)


def _tiny(seed: int = 0, **over: object) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(**{**TINY.__dict__, **over})
    return GPT(cfg)


def test_shapes_and_tied_weights():
    m = _tiny()
    idx = torch.randint(0, 96, (3, 16))
    logits, loss = m(idx)
    assert loss is None and logits is not None and logits.shape == (3, 16, 96)
    assert m.hidden(idx).shape == (3, 16, 32)
    none, loss = m(idx, idx)
    assert none is None and loss is not None and loss.shape == ()
    assert m.lm_head.weight is m.transformer.wte.weight
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_gpt2_init():
    m = _tiny(n_layer=4, n_embd=64, n_head=4)
    blk = m.transformer.h[0]
    assert blk.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert blk.mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert blk.attn.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert torch.count_nonzero(blk.attn.c_attn.bias) == 0
    assert torch.count_nonzero(blk.mlp.c_fc.bias) == 0


def test_loss_at_init_near_ln_vocab():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=512)
    m = GPT(cfg)
    stream = torch.randint(0, 512, (4, 33))
    _, loss = m(stream[:, :-1], stream[:, 1:])
    assert loss is not None
    assert abs(loss.item() - math.log(512)) < 0.2


@pytest.mark.parametrize("loss_kind", ["fused", "lean", "plain"])
def test_each_loss_equals_full_logits_loss_and_grads(loss_kind):
    """All three losses give F.cross_entropy's loss and every parameter's gradient,
    the tied wte/lm_head weight included (its embedding and head parts add up)."""
    m = _tiny(loss_chunk=7, loss=loss_kind)  # 7 does not divide 2 * 16
    idx, tgt = torch.randint(0, 96, (2, 16)), torch.randint(0, 96, (2, 16))
    tgt[0, :3] = -1  # ignored positions
    logits, _ = m(idx)
    assert logits is not None
    ref = torch.nn.functional.cross_entropy(logits.view(-1, 96), tgt.view(-1), ignore_index=-1)
    ref.backward()
    ref_grads = [p.grad.clone() for p in m.parameters()]  # tied wte: embedding + head parts
    m.zero_grad(set_to_none=True)
    _, loss = m(idx, tgt)
    assert loss is not None
    loss.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for p, g in zip(m.parameters(), ref_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def _grads(m: GPT, idx: torch.Tensor, tgt: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    m.zero_grad(set_to_none=True)
    _, loss = m(idx, tgt)
    assert loss is not None
    (loss / 2).backward()  # as the trainer's loss / grad_accum
    return loss.item(), [p.grad.clone() for p in m.parameters()]


def test_fused_and_lean_match_plain_under_bf16_autocast():
    idx, tgt = torch.randint(0, 96, (2, 16)), torch.randint(0, 96, (2, 16))
    got = {}
    for kind in ("plain", "lean", "fused"):
        m = _tiny(loss=kind, loss_chunk=12)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got[kind] = _grads(m, idx, tgt)
    for kind in ("lean", "fused"):
        assert got[kind][0] == pytest.approx(got["plain"][0], abs=2e-2)
        for a, b in zip(got[kind][1], got["plain"][1], strict=True):
            torch.testing.assert_close(a, b, rtol=5e-2, atol=2e-3)


def test_fused_loss_under_torch_compile_equals_eager():
    """The trunk compiled (aot_eager on the CPU), the fused loss left eager: same loss and grads."""
    idx, tgt = torch.randint(0, 96, (2, 16)), torch.randint(0, 96, (2, 16))
    tgt[1, 5:9] = -1
    m = _tiny(loss="fused", loss_chunk=10)
    eager = _grads(m, idx, tgt)
    try:
        compiled = _grads(torch.compile(m, backend="aot_eager"), idx, tgt)  # type: ignore[arg-type]
    finally:
        torch._dynamo.reset()
    assert compiled[0] == pytest.approx(eager[0], rel=1e-6)
    for a, b in zip(compiled[1], eager[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="fused, lean or plain"):
        GPTConfig(loss="huge")  # type: ignore[arg-type]


def test_bf16_autocast_and_dropout_train_mode():
    m = _tiny(dropout=0.1)
    idx = torch.randint(0, 96, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = m(idx, idx)
        assert loss is not None and loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        m.eval()
        with torch.no_grad():
            cache = KVCache(m.cfg, batch=2, max_len=16, device="cpu", dtype=torch.bfloat16)
            logits = m.forward_cached(idx[:, :4], cache)
    assert logits.shape == (2, 4, 96) and m.transformer.wte.weight.grad is not None


def test_one_batch_can_be_overfit():
    m = _tiny(seed=1)
    torch.manual_seed(1)
    stream = torch.randint(0, 96, (4, 17))
    x, y = stream[:, :-1], stream[:, 1:]
    opt = m.configure_optimizer(0.0, 3e-3, (0.9, 0.95), "cpu", "adamw")
    first = last = float("nan")
    for step in range(150):
        _, loss = m(x, y)
        assert loss is not None
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        first = loss.item() if step == 0 else first
        last = loss.item()
        if last < 0.2:
            break
    assert first > 4.0 and last < 0.2


def test_param_count_124m_on_meta():
    with torch.device("meta"):
        m = GPT(GPTConfig.from_train(TrainConfig()))
    assert m.num_params() == PARAMS_124M
    assert m.num_params(non_embedding=True) == PARAMS_124M_NON_EMBEDDING


def test_optimizer_decays_only_matrices():
    m = _tiny()
    opt = m.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu", "adamw")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == m.num_params()


def test_from_train_copies_shape():
    tc = TrainConfig(
        n_layer=3,
        n_head=2,
        n_embd=16,
        block_size=8,
        vocab_size=64,
        loss="lean",
        loss_chunk=5,
        fim_rate=0.0,
    )
    g = GPTConfig.from_train(tc)
    assert (g.n_layer, g.n_head, g.n_embd, g.block_size, g.vocab_size, g.loss, g.loss_chunk) == (
        3, 2, 16, 8, 64, "lean", 5,
    )  # fmt: skip
    assert TrainConfig().loss == GPTConfig().loss == "fused"  # the default


def _greedy_full(m: GPT, prompt: torch.Tensor, n: int) -> torch.Tensor:
    idx = prompt
    for _ in range(n):
        logits, _ = m(idx)
        assert logits is not None
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@torch.no_grad()
def test_cached_greedy_equals_full_greedy():
    m = _tiny(seed=3).eval()
    prompt = torch.randint(0, 96, (2, 5))
    full = _greedy_full(m, prompt, 11)  # fills the whole block of 16
    cache = KVCache(m.cfg, batch=2, max_len=16, device="cpu", dtype=torch.float32)
    # the prompt in two pieces exercises the offset causal mask (T_new > 1, length > 0)
    m.forward_cached(prompt[:, :2], cache)
    logits = m.forward_cached(prompt[:, 2:], cache)
    idx = prompt
    for _ in range(11):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], dim=1)
        if idx.shape[1] < 16:
            logits = m.forward_cached(nxt, cache)
    assert torch.equal(idx, full)
    # the cached logits match the full forward's, position by position
    cache = KVCache(m.cfg, batch=2, max_len=16, device="cpu", dtype=torch.float32)
    ref, _ = m(full[:, :-1])
    got = torch.cat(
        [m.forward_cached(full[:, :9], cache), m.forward_cached(full[:, 9:15], cache)], 1
    )
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert cache.length == 15
    with pytest.raises(ValueError, match="cache"):
        m.forward_cached(full[:, :2], cache)


@torch.no_grad()
@pytest.mark.parametrize("lengths", [(6, 6, 6), (4, 9, 6)], ids=["same", "ragged"])
def test_hidden_rows_step_equals_the_full_forward_of_each_row(lengths: tuple[int, ...]) -> None:
    """One decode step of rows at their own positions (the engine's): each row's state and
    the keys it writes are what the full forward of that row alone gives, twice over."""
    m = _tiny(seed=5).eval()
    seqs = [torch.randint(0, 96, (1, n + 2)) for n in lengths]
    cache = KVCache(m.cfg, batch=4, max_len=16, device="cpu", dtype=torch.float32)
    for i, s in enumerate(seqs):
        m.hidden_cached(s[:, :-2], cache.row(i))  # each prompt into its own row
    for step in (2, 1):  # two steps: the second reads the keys the first wrote
        idx = torch.cat([s[:, -step:][:, :1] for s in seqs])  # (3, 1)
        got = m.hidden_rows(idx, cache, [s.shape[1] - step for s in seqs])
        for i, s in enumerate(seqs):
            want = m.hidden(s[:, : s.shape[1] - step + 1])[:, -1]
            torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-5)
    assert not cache.k[0][3].any()  # the row past the three is untouched


def test_the_cpu_head_gives_gemm_logits_for_one_row_and_for_a_batch() -> None:
    """Three rows or more go through oneDNN's packed copy: the same logits to float
    rounding and the same argmax; one row is the gemv, exactly."""
    m = _tiny(seed=6).eval()
    head = Head(m, 90)
    h = torch.randn(8, m.cfg.n_embd)
    want = h @ m.lm_head.weight[:90].t()
    one = head(h[:1])
    assert head._packed is None and torch.equal(one, h[:1] @ head.wt)
    batch = head(h)
    assert head._packed is not None and batch.shape == (8, 90)
    torch.testing.assert_close(batch, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(batch.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("loss", ["fused", "lean", "plain"])
def test_checkpointed_blocks_give_the_same_loss_and_gradients(loss: str) -> None:
    """Recomputing the blocks in backward changes memory, not math: with dropout on too
    (the RNG state is replayed, so the recompute draws the same masks)."""
    shape = dict(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=96, dropout=0.1)
    idx = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    results = []
    for ac in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**shape, loss=loss, checkpoint_blocks=ac))  # type: ignore[arg-type]
        model.train()
        torch.manual_seed(1)  # the dropout draws
        _, out = model(idx, idx)
        assert out is not None
        out.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointed_blocks_keep_less_for_backward() -> None:
    """What autograd saves during the forward: the blocks' activations without, one input
    a block with (counted through saved-tensor hooks, on the real model)."""
    shape = dict(n_layer=4, n_head=2, n_embd=32, block_size=32, vocab_size=96)
    idx = torch.randint(0, 96, (2, 32))
    kept = []
    for ac in (False, True):
        model = GPT(GPTConfig(**shape, checkpoint_blocks=ac))  # type: ignore[arg-type]
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.hidden(idx).sum()
        kept.append(total)
    without, with_ac = kept
    assert with_ac < without / 3, kept
