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

AdamW steps on the shards as they are (its update is elementwise); Muon,
which orthogonalises whole matrices, through model/muon_sharded.py.

With one process `parallel: fsdp` shards nothing; its checkpoints are still
`torch.distributed.checkpoint` folders (model/checkpoint_dcp.py), so a run
can move between process counts.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

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
