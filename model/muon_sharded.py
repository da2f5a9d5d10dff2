"""torch.optim.Muon over FSDP2's shards (`parallel: fsdp`, model/fsdp.py).

Muon orthogonalises each weight matrix's update whole (Newton-Schulz), and
under FSDP a rank holds only some rows of each. `ShardedMuon` keeps torch's
arithmetic and shards everything else:

- the momentum buffer is a shard like the weight (its update, a lerp, is
  elementwise), so DCP saves and reshards it like any other state;
- the i-th matrix of a step has an owner, rank i mod N: the ranks' rows of its
  Nesterov direction are gathered to the owner, which runs torch's own
  Newton-Schulz (`torch.optim._muon`) on the whole matrix, and scatters the
  rows of the result back; so each rank orthogonalises 1/N of the matrices
  (for 774M, 21 TFLOP a step in all: at N = 8 done by every rank it would
  match the step's forward and backward);
- each rank then applies its rows with weight decay and torch's learning-rate
  scaling for the whole matrix's shape.

The traffic is one gather and one scatter of each update (an all-gather's
worth), every gather posted before any owner computes. On whole tensors (one
process) the step is torch.optim.Muon's single-tensor step, bitwise (tested).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

Job = tuple[Tensor, dict[str, Any], Tensor]  # (weight, its param group, update direction)


class ShardedMuon(torch.optim.Muon):
    """torch.optim.Muon whose weights may be FSDP2 shards (see the module docstring)."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        jobs: list[Job] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    jobs.append((p, group, self._direction(p, p.grad, group)))
        for (p, group, _), ortho in zip(jobs, orthogonalise(jobs), strict=True):
            lr = group["lr"]
            adjusted = _adjust_lr(lr, group["adjust_lr_fn"], p.shape)  # the whole shape's
            mine = p.to_local() if isinstance(p, DTensor) else p
            mine.mul_(1 - lr * group["weight_decay"])
            mine.add_(ortho, alpha=-adjusted)
        return None

    def _direction(self, p: Tensor, grad: Tensor, group: dict[str, Any]) -> Tensor:
        """Momentum (on the shards) and the Nesterov direction, as torch.optim.Muon."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        buf, momentum = state["momentum_buffer"], group["momentum"]
        buf.lerp_(grad, 1 - momentum)
        return grad.lerp(buf, momentum) if group["nesterov"] else buf


def _ns(update: Tensor, group: dict[str, Any]) -> Tensor:
    return _zeropower_via_newtonschulz(
        update, group["ns_coefficients"], group["ns_steps"], group["eps"]
    )


def _padded(t: Tensor, rows: int) -> Tensor:
    if t.shape[0] == rows:
        return t.contiguous()
    pad = t.new_zeros((rows - t.shape[0], *t.shape[1:]))
    return torch.cat([t, pad])


def orthogonalise(jobs: list[Job]) -> list[Tensor]:
    """Each job's orthogonalised update: whole for a whole tensor, this rank's rows for a
    shard (owners by matrix, gather then scatter: the module docstring)."""
    out: list[Tensor | None] = [None] * len(jobs)
    sharded = []
    for k, (_, group, update) in enumerate(jobs):
        if isinstance(update, DTensor):
            sharded.append(k)
        else:
            out[k] = _ns(update, group)
    if sharded:
        for k, rows in zip(sharded, _sharded([jobs[k] for k in sharded]), strict=True):
            out[k] = rows
    assert all(o is not None for o in out)
    return [o for o in out if o is not None]


def _sharded(jobs: list[Job]) -> list[Tensor]:
    mesh = jobs[0][2].device_mesh  # type: ignore[attr-defined]
    group, n, me = mesh.get_group(), mesh.size(), mesh.get_local_rank()
    owner = [dist.get_global_rank(group, j % n) for j in range(len(jobs))]
    per = [-(-u.shape[0] // n) for _, _, u in jobs]  # rows of a padded shard
    pieces: dict[int, list[Tensor]] = {}
    works = []
    for j, (_, _, u) in enumerate(jobs):  # 1. every rank's rows to the owner
        local = _padded(u.to_local(), per[j])  # type: ignore[attr-defined]
        mine = j % n == me
        if mine:
            pieces[j] = [torch.empty_like(local) for _ in range(n)]
        works.append(dist.gather(local, pieces.get(j), dst=owner[j], group=group, async_op=True))
    for w in works:
        w.wait()
    received, works = [], []
    for j, (_, g, u) in enumerate(jobs):  # 2. the owner orthogonalises, 3. rows back
        chunks = None
        if j % n == me:
            whole = torch.cat(pieces.pop(j))[: u.shape[0]]
            chunks = list(_padded(_ns(whole, g), per[j] * n).split(per[j]))
        recv = torch.empty((per[j], *u.shape[1:]), dtype=torch.bfloat16, device=u.device)
        works.append(dist.scatter(recv, chunks, src=owner[j], group=group, async_op=True))
        received.append(recv[: u.to_local().shape[0]])  # type: ignore[attr-defined]
    for w in works:
        w.wait()
    return received
