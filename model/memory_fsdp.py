"""The planner's FSDP2 terms (`parallel: fsdp` on N GPUs, model/fsdp.py), per GPU.

What model/fsdp.py's sharding keeps on each of N GPUs through a step:

- a 1/N shard of the fp32 weights, of their fp32 gradients and of the optimizer's
  state (AdamW's moments, Muon's momentum: both sharded like the weights);
- the weights gathered whole for compute, in the compute dtype (bf16 under
  `MixedPrecisionPolicy`): the root group (the embeddings, which are also the
  tied head, and ln_f) for the whole forward and backward, as FSDP2 keeps the
  root's weights gathered between the two; and two blocks at a time, the one
  running and the next one prefetched;
- gradients whole until they are reduce-scattered (fp32): the root's, ready only
  at the end of the backward, and one block's.

The activations are those of one GPU's micro-batch, as without FSDP (the same
formulas, model/memory.py), and autocast keeps no weight casts (the gathered
weights are already bf16). Muon's Newton-Schulz gathers one matrix's update
whole in the optimizer step, when the activations are gone: a few copies of
a 4 C x C matrix, left out. The shards are checked against a 2-process gloo
model's own (tests/model/test_memory_fsdp.py); the gathered and unsharded terms
follow FSDP2's documented behaviour, and bench/scale_gpu.py measures them on a GPU.
"""

from __future__ import annotations

from typing import Protocol


class Workload(Protocol):
    """What these terms read of model/memory.py's (frozen) Workload."""

    @property
    def n_layer(self) -> int: ...
    @property
    def n_embd(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def optimizer(self) -> str: ...
    @property
    def shards(self) -> int: ...
    @property
    def s(self) -> int: ...


def block_params(w: Workload) -> int:
    """One block: 4 Linear weights 12 C^2, their biases 9 C, two LayerNorms 4 C."""
    return 12 * w.n_embd**2 + 13 * w.n_embd


def root_params(w: Workload) -> int:
    """What the root group holds: wte (= the head) V C, wpe T C, ln_f 2 C."""
    return w.vocab_size * w.n_embd + w.block_size * w.n_embd + 2 * w.n_embd


def _shard(n: int, ways: int) -> int:
    return -(-n // ways)  # FSDP2 pads a weight's rows up to a multiple of N


def sharded_static(w: Workload, params: int, state: int) -> tuple[dict[str, int], dict[str, int]]:
    """(weights and optimizer state, gradients) on one of w.shards GPUs."""
    n = w.shards
    states = "Muon + AdamW states" if w.optimizer == "muon" else "AdamW states (fp32)"
    kept = {
        f"weights (fp32), a 1/{n} shard": 4 * _shard(params, n),
        f"{states}, a 1/{n} shard": _shard(state, n),
        "weights gathered: the root group + 2 blocks": w.s * (root_params(w) + 2 * block_params(w)),
    }
    grads = {
        f"gradients (fp32), a 1/{n} shard": 4 * _shard(params, n),
        "gradients before reduce-scatter: root + 1 block": 4 * (root_params(w) + block_params(w)),
    }
    return kept, grads
