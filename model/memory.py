"""GPU memory of a training config, before launching: what each part needs and what fits.

Every figure is in bytes and follows what PyTorch really allocates for
model/gpt.py, checked against autograd's saved tensors and a fake-tensor
memory trace (model/memtrace.py) in tests/model/test_memory.py. Shapes: B micro-batch, T
block_size, C n_embd, L n_layer, nh n_head, V vocab_size, P parameters,
s = bytes of the compute dtype (2 under bf16/fp16 autocast, 4 in fp32).

Static (whole run): fp32 weights 4P, fp32 gradients 4P (kept between the
micro-steps of an accumulation), AdamW exp_avg and exp_avg_sq 8P plus one
fp32 `step` scalar per parameter tensor; with `optimizer: muon` the blocks'
matrices (12 C^2 L) keep one fp32 momentum buffer instead (4 B each, no step).
Muon's Newton-Schulz temporaries (a few bf16 copies of one matrix at a time)
live only in the optimizer step, when the activations are gone. Autocast keeps fp32 weights and
casts on the fly, so there is no separate master copy; the casts of the block
weights (s * 12 C^2 per layer) are saved for backward.

Activations kept for backward, per layer (Korthikanti et al. 2022, "Reducing
activation recomputation in large transformer models", eq. 2, count
34 BTC + 5 nh T^2 B bytes in 16-bit; adjusted to PyTorch):
    ln_1 input (fp32 residual) 4 BTC, its mean/rstd 8 BT, ln_1 output cast s BTC,
    q k v 3 s BTC, SDPA output s BTC (also the c_proj input: same storage),
    SDPA logsumexp 4 B nh T (flash keeps no T x T scores: the 5 nh T^2 term is gone),
    ln_2 input 4 BTC + 8 BT, ln_2 output cast s BTC, c_fc output 4 s BTC, GELU output 4 s BTC,
    = (8 + 14 s) BTC + 16 BT + 4 B nh T          (36 BTC in bf16: the residual stream is fp32)
plus dropout masks (1 byte each, CUDA) when dropout > 0. torch.compile's
partitioner keeps the same tensors for the blocks (checked with its
aot_eager_decomp_partition backend).

The loss: see model/loss.py. `fused` (the default) makes its gradients in the
forward pass and keeps only them: dL/dh (4 BTC, fp32 like ln_f's output) and
dL/dW (4 VC, fp32); its peak is in that forward (the fp32 hidden, the weight's
cast and one chunk's logits with their casts), its backward only scales the
kept gradients in place. `lean` keeps the fp32 hidden state (4 BTC) and one
logsumexp per position; its backward holds one chunk of logits at a time and
is where it peaks. Under torch.compile the partitioner would save each chunk's
logits in the compute dtype instead of recomputing them (s BTV, still 1/6 of
the plain loss's peak), unless the loss is excluded from compilation (both
chunked losses are). `plain` keeps the fp32 log-softmax (4 BTV) and peaks at
12 BTV in its backward.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from model.loss import auto_chunk
from model.memory_loss import (
    loss_kept_bytes,
    loss_transient_bytes,
)
from model.optim import state_bytes as optim_state_bytes

if TYPE_CHECKING:
    from model.gpt import GPTConfig
    from model.train_config import Loss, Optimizer, TrainConfig

GiB = 2**30
# The CUDA context with cuBLAS handles and lazily loaded kernels (CUDA 12): 300-500 MiB.
CUDA_CONTEXT = int(0.45 * GiB)
# What the driver keeps out of a card's nominal size: a 12 GiB RTX 4070 shows
# torch 11.72 GiB of "total capacity" (the story's OOM message).
DRIVER_RESERVE = int(0.28 * GiB)
CUBLAS_WORKSPACE = 64 * 2**20  # cuBLAS/cuBLASLt workspaces, per stream
COMPILE_WORKSPACE = 256 * 2**20  # Inductor/Triton scratch buffers and autotuning
FRAGMENTATION = 0.05  # the caching allocator's rounding and split blocks: 5 % of the peak

_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True, kw_only=True)
class Workload:
    """One micro-batch of one config on one GPU: everything the estimate depends on."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    micro_batch: int
    dtype: str = "bfloat16"  # resolved: bfloat16, float16 or float32
    compile: bool = False
    loss: Loss = "fused"  # fused | lean | plain (model/loss.py)
    optimizer: Optimizer = "adamw"  # adamw | muon (model/optim.py)
    loss_chunk: int = 0
    dropout: float = 0.0
    checkpoint: bool = False  # activation checkpointing: the blocks recomputed in backward
    shards: int = 1  # FSDP2 over this many GPUs (model/memory_fsdp.py); 1: each holds all

    def __post_init__(self) -> None:
        if self.dtype not in _BYTES:
            raise ValueError(f"dtype must be resolved to one of {sorted(_BYTES)}, got {self.dtype}")
        if self.loss not in ("fused", "lean", "plain"):
            raise ValueError(f"loss must be fused, lean or plain, got {self.loss}")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be adamw or muon, got {self.optimizer}")

    @property
    def s(self) -> int:
        return _BYTES[self.dtype]

    @property
    def activation_checkpointing(self) -> str:
        """The TrainConfig key's resolved value (what GPTConfig.from_train reads)."""
        return "full" if self.checkpoint else "none"

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.block_size

    @property
    def chunk(self) -> int:
        return self.loss_chunk or auto_chunk(self.tokens, self.vocab_size)

    def with_batch(self, micro_batch: int) -> Workload:
        return dataclasses.replace(self, micro_batch=micro_batch)

    @classmethod
    def from_train(
        cls, cfg: TrainConfig, micro_batch: int, dtype: str, shards: int = 1
    ) -> Workload:
        """The workload of a training config at `micro_batch`, in the resolved `dtype`; on
        `shards` GPUs when its `parallel` is fsdp."""
        return cls(
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.n_embd,
            block_size=cfg.block_size,
            vocab_size=cfg.vocab_size,
            micro_batch=micro_batch,
            dtype=dtype,
            compile=cfg.compile,
            loss=cfg.loss,
            optimizer=cfg.optimizer,
            loss_chunk=cfg.loss_chunk,
            dropout=cfg.dropout,
            checkpoint=cfg.activation_checkpointing == "full",
            shards=shards if cfg.parallel == "fsdp" else 1,
        )

    def gpt_config(self) -> GPTConfig:
        """The model this workload runs (for traces on real or fake tensors)."""
        from model.gpt import GPTConfig

        return GPTConfig.from_train(self)


# --- parameters and optimizer -------------------------------------------------


def param_count(w: Workload) -> int:
    """As GPT.num_params(): wte (= lm_head) V C, wpe T C, L (12 C^2 + 13 C), ln_f 2 C."""
    C = w.n_embd
    return w.vocab_size * C + w.block_size * C + w.n_layer * (12 * C * C + 13 * C) + 2 * C


def param_tensors(w: Workload) -> int:
    """Parameter tensors: wte, wpe, 12 per block (4 Linear weights + biases, 2 LayerNorms x 2), ln_f x 2."""
    return 2 + 12 * w.n_layer + 2


def optimizer_state_bytes(w: Workload) -> int:
    """AdamW: exp_avg + exp_avg_sq in fp32 (8 P) and one fp32 `step` scalar per parameter
    tensor. Muon: a fp32 momentum buffer for each block matrix (4 of them a layer, 12 C^2
    parameters), AdamW's for the rest."""
    muon = w.n_layer * 12 * w.n_embd**2 if w.optimizer == "muon" else 0
    muon_tensors = 4 * w.n_layer if w.optimizer == "muon" else 0
    return optim_state_bytes(param_count(w), param_tensors(w), muon, muon_tensors)


def autocast_copy_bytes(w: Workload) -> int:
    """The block weights cast to the compute dtype and saved for backward (biases are not);
    none under FSDP, whose gathered weights are already in it."""
    return 0 if w.s == 4 or w.shards > 1 else w.s * 12 * w.n_embd**2 * w.n_layer


# --- activations --------------------------------------------------------------


def layer_activation_bytes(w: Workload) -> int:
    """Tensors one block keeps for backward (module docstring)."""
    B, T, C, s = w.micro_batch, w.block_size, w.n_embd, w.s
    kept = (8 + 14 * s) * B * T * C + 16 * B * T + 4 * B * w.n_head * T
    if w.dropout > 0:
        kept += 2 * B * T * C  # two bool dropout masks (attention and MLP residual)
    return kept


def trunk_extra_bytes(w: Workload) -> int:
    """Outside the blocks: token ids for the embedding backward, ln_f's input and stats."""
    B, T, C = w.micro_batch, w.block_size, w.n_embd
    extra = 8 * B * T + 8 * T + 4 * B * T * C + 8 * B * T  # ids, positions, ln_f input, stats
    if w.dropout > 0:
        extra += B * T * C
    return extra


def blocks_kept_bytes(w: Workload) -> int:
    """What the blocks keep for backward: every block's activations, or with activation
    checkpointing each block's fp32 input (the residual stream) and, while one block is
    recomputed in backward, that block's activations."""
    if not w.checkpoint:
        return w.n_layer * layer_activation_bytes(w)
    return w.n_layer * 4 * w.micro_batch * w.block_size * w.n_embd


def recompute_peak_bytes(w: Workload) -> int:
    """With activation checkpointing, the backward's peak beyond the static memory: the
    blocks' inputs and the trunk's ends still kept, the loss's kept tensors consumed, and
    one block's activations rebuilt with the gradient flowing into it (fp32, B T C)."""
    if not w.checkpoint:
        return 0
    kept = activation_bytes(w) - loss_kept_bytes(w)
    return kept + layer_activation_bytes(w) + 4 * w.tokens * w.n_embd


def activation_bytes(w: Workload) -> int:
    """Everything autograd keeps for backward: blocks, autocast weight casts, trunk ends, loss."""
    return blocks_kept_bytes(w) + autocast_copy_bytes(w) + trunk_extra_bytes(w) + loss_kept_bytes(w)


# --- evaluation (no_grad) -------------------------------------------------------


def eval_transient_bytes(w: Workload) -> int:
    """The largest live set of a no_grad forward: one block's MLP, or the loss."""
    N, C, V, s, c = w.tokens, w.n_embd, w.vocab_size, w.s, w.chunk
    # the block's input (GPT.hidden still holds it) and the residual after attention (fp32),
    # ln_2's fp32 output (the MLP's input, alive until it returns), c_fc and GELU outputs
    block = 4 * N * C + 4 * N * C + 4 * N * C + 8 * s * N * C
    if w.loss == "plain":
        # the logits in s (under autocast), their fp32 copy and the fp32 log_softmax
        loss = 4 * N * C + s * V * C + (8 + (s if s < 4 else 0)) * N * V
    elif w.loss == "fused":
        # the fp32 hidden, the weight's cast, a chunk's rows and logits in s and its logits
        # in fp32 (each chunk's are freed before the next matmul); in fp32 the casts are no-ops
        loss = 4 * N * C + (s * V * C + s * c * C + (s + 4) * c * V if s < 4 else 4 * c * V)
    else:
        # a chunk's logits in s and in fp32, plus (from the second chunk on) the previous
        # chunk's fp32 logits, still referenced while the next matmul runs
        second = min(c, N - c)  # the next chunk's rows (0 when one chunk covers N)
        chunks = max((s + 4) * c, 4 * c + (s + 4) * second if second > 0 else 0)
        loss = 4 * N * C + s * V * C + chunks * V
    return max(block, loss)


def eval_largest_tensor(w: Workload) -> int:
    """The eval's biggest single allocation: what the allocator may have to find fresh."""
    N, C, V, c = w.tokens, w.n_embd, w.vocab_size, w.chunk
    if w.loss == "plain":
        return 4 * N * V  # the fp32 logits: the story's "1.54 GB more wanted" at B = 8
    return max(4 * c * V, 4 * w.s * N * C)


# --- the estimate -----------------------------------------------------------------


@dataclass(frozen=True)
class Overhead:
    """Memory outside PyTorch's tensors."""

    context: int  # CUDA context (+ the driver's reserve when planning for a nominal size)
    workspace: int  # cuBLAS (+ compile) workspaces

    @classmethod
    def for_card(cls, compile: bool, nominal: bool) -> Overhead:
        """nominal: the budget is the card's marketed size (gpu_gb), not what CUDA reports."""
        ctx = CUDA_CONTEXT + (DRIVER_RESERVE if nominal else 0)
        return cls(ctx, CUBLAS_WORKSPACE + (COMPILE_WORKSPACE if compile else 0))

    @property
    def total(self) -> int:
        return self.context + self.workspace


@dataclass
class Estimate:
    workload: Workload
    overhead: Overhead
    params: int
    parts: dict[str, int] = field(default_factory=dict)  # table rows, bytes
    peak_train: int = 0  # tensors at the peak of a training micro-step (before fragmentation)
    peak_eval: int = 0  # tensors at the peak of an eval step run on its own
    eval_after_train: int = 0  # the train step's reserve + the eval's largest new tensor

    @property
    def fragmentation(self) -> int:
        return int(FRAGMENTATION * self.peak_train)

    @property
    def required(self) -> int:
        """GPU memory the run needs: the worst of train, eval, eval-after-train, plus overhead."""
        train = self.peak_train + self.fragmentation
        evals = max(int(self.peak_eval * (1 + FRAGMENTATION)), self.eval_after_train)
        return max(train, evals) + self.overhead.total

    def fits(self, budget: int) -> bool:
        return self.required <= budget


def _loss_peak_pass(w: Workload) -> str:
    return "forward" if w.loss == "fused" else "backward"


_STATE_NAMES = {
    "adamw": "AdamW states (fp32 exp_avg, exp_avg_sq)",
    "muon": "optimizer states (Muon momentum, AdamW moments)",
}


def static_parts(w: Workload) -> tuple[dict[str, int], dict[str, int]]:
    """(weights and optimizer state, gradients) on one GPU for the whole step: all of them,
    or under FSDP a 1/N shard of each and what is gathered whole (model/memory_fsdp.py)."""
    P, state = param_count(w), optimizer_state_bytes(w)
    if w.shards > 1:
        from model.memory_fsdp import sharded_static

        return sharded_static(w, P, state)
    kept = {"weights (fp32)": 4 * P, _STATE_NAMES[w.optimizer]: state}
    return kept, {"gradients (fp32)": 4 * P}


def estimate(w: Workload, overhead: Overhead) -> Estimate:
    P = param_count(w)
    batch = 16 * w.tokens  # x and y, int64
    kept, grads = static_parts(w)
    parts = {
        **kept,
        **grads,
        "autocast weight casts kept for backward": autocast_copy_bytes(w),
        (
            f"activations kept, {w.n_layer} layers"
            + (" (checkpointed: their inputs)" if w.checkpoint else "")
        ): blocks_kept_bytes(w),
        "activations kept, embeddings and ln_f": trunk_extra_bytes(w) + batch,
        f"loss kept ({w.loss})": loss_kept_bytes(w),
        f"loss peak beyond what it keeps ({w.loss}, in {_loss_peak_pass(w)})": (
            loss_transient_bytes(w)
        ),
        f"eval pass peak ({w.loss} loss, no_grad)": eval_transient_bytes(w),
    }
    if w.checkpoint:
        parts["backward with one block recomputed (its activations + gradient)"] = (
            layer_activation_bytes(w) + 4 * w.tokens * w.n_embd
        )
    static = sum(kept.values()) + sum(grads.values())
    # The fused loss peaks in its forward, the others at the start of their backward, both
    # with every activation alive. Late in the backward the embedding's dL/dW (4 V C) meets
    # the head's, waiting in autograd's buffer (4 V C, added in place): higher only for a
    # micro-batch that is tiny against the vocabulary (MemTracker, whose hooks keep the
    # buffer from being reused, sees 4 V C more there than a plain run allocates).
    V, C = w.vocab_size, w.n_embd
    meet = static + batch + autocast_copy_bytes(w) + 8 * V * C + 4 * w.tokens * C
    peak_train = max(
        static + activation_bytes(w) + batch + loss_transient_bytes(w),
        static + batch + recompute_peak_bytes(w),
        meet,
    )
    # eval runs after zero_grad(set_to_none=True): no gradients. Autocast caches the
    # casts of parameters until its context exits, in no_grad mode too.
    peak_eval = sum(kept.values()) + batch + autocast_copy_bytes(w) + eval_transient_bytes(w)
    e = Estimate(w, overhead, P, parts, peak_train, peak_eval)
    e.eval_after_train = peak_train + e.fragmentation + eval_largest_tensor(w)
    return e


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def batch_candidates(sequences: int, world_size: int = 1) -> list[int]:
    """Micro-batches m with m x grad_accum = sequences and grad_accum divisible by world_size."""
    return [m for m in divisors(sequences) if (sequences // m) % world_size == 0]


def largest_fitting(
    w: Workload, overhead: Overhead, budget: int, candidates: list[int]
) -> Estimate | None:
    """The estimate of the largest candidate micro-batch that fits `budget`, or None."""
    for m in sorted(candidates, reverse=True):
        e = estimate(w.with_batch(m), overhead)
        if e.fits(budget):
            return e
    return None
