"""FSDP2 (`parallel: fsdp`): weights, gradients and optimizer state sharded over the ranks.

Under `torchrun --nproc_per_node=N`, `shard()` applies PyTorch's `fully_shard`
to each transformer block and then to the whole model (the root group holds
the embeddings, the tied head and the last LayerNorm), as torchtitan does:

- each rank keeps 1/N of every weight (a DTensor sharded on dim 0), of its
  gradient and of AdamW's or Muon's state for it;
- a block's weights are all-gathered just before its forward (and again for
  its backward) and dropped after (`reshard_after_forward`); gradients are
  reduce-scattered in backward, one block at a time;
- on a GPU in bf16 the gathered weights are bf16 and gradients are reduced
  in fp32 (`MixedPrecisionPolicy`); fp16 (a GradScaler) is refused: use bf16
  or fp32;
- with `compile: true` each block is compiled before it is sharded (the
  root's hooks stay eager).

AdamW steps on the shards as they are (its update is elementwise). Muon
orthogonalises a whole matrix, so `ShardedMuon` keeps the momentum a shard
(its update is elementwise too), gathers each matrix's update direction
whole, runs torch's own Newton-Schulz on it, and each rank applies its own
rows: the same arithmetic as `torch.optim.Muon` (bitwise on plain tensors,
tested), the state sharded like the weights, every rank computing the same
orthogonalisation (compute of one GPU, not 1/N: argued in docs/training.md).

With one process `parallel: fsdp` shards nothing; its checkpoints are still
`torch.distributed.checkpoint` folders (model/checkpoint_dcp.py), so a run
can move between process counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

from model.distributed import DistInfo
from model.errors import ConfigError
from model.runtime import Precision


def shard(
    model: torch.nn.Module,
    blocks: Iterable[torch.nn.Module],
    info: DistInfo,
    device: torch.device,
    precision: Precision,
    compile_blocks: bool,
) -> None:
    """fully_shard each of `blocks` (the transformer's), then the root `model`, in place
    (in a single process it shards nothing)."""
    blocks = list(blocks)
    if precision.uses_scaler:
        raise ConfigError(
            "parallel=fsdp does not run in float16 (it needs a GradScaler for sharded "
            "gradients); set dtype=bfloat16 (or float32), or parallel=ddp"
        )
    if compile_blocks:
        for block in blocks:
            block.compile()
    if not info.enabled:
        return
    mesh = init_device_mesh(device.type, (info.world_size,))
    policy = MixedPrecisionPolicy()
    if precision.name == "bfloat16" and device.type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def whole(t: Tensor) -> Tensor:
    """A DTensor gathered whole (a collective); a plain tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def local_rows(full: Tensor, like: Tensor) -> Tensor:
    """The rows of `full` that this rank holds of `like` (FSDP2 shards dim 0 as
    torch.chunk does); `full` itself for a plain tensor."""
    if not isinstance(like, DTensor):
        return full
    mesh = like.device_mesh
    rank, ranks = mesh.get_local_rank(), mesh.size()
    chunks = torch.chunk(full, ranks, dim=0)
    mine = chunks[rank] if rank < len(chunks) else full[:0]
    local = like.to_local()
    assert mine.shape == local.shape, f"shard {tuple(local.shape)} vs rows {tuple(mine.shape)}"
    return mine


class ShardedMuon(torch.optim.Muon):
    """torch.optim.Muon over FSDP2's sharded matrices (see the module docstring); on plain
    tensors it runs exactly torch.optim.Muon's single-tensor step."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, group)
        return None

    def _update(self, p: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        buf, momentum = state["momentum_buffer"], group["momentum"]
        buf.lerp_(grad, 1 - momentum)  # elementwise: on the shards
        update = grad.lerp(buf, momentum) if group["nesterov"] else buf
        ortho = _zeropower_via_newtonschulz(
            whole(update), group["ns_coefficients"], group["ns_steps"], group["eps"]
        )
        lr = group["lr"]
        adjusted = _adjust_lr(lr, group["adjust_lr_fn"], p.shape)  # the whole matrix's shape
        mine = p.to_local() if isinstance(p, DTensor) else p
        mine.mul_(1 - lr * group["weight_decay"])
        mine.add_(local_rows(ortho, p), alpha=-adjusted)
