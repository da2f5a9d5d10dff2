"""The optimizer of a run: Muon for the blocks' matrices (the default), or AdamW for all.

`optimizer: adamw`: one torch AdamW; weight decay on the matrices and the
embeddings (dim >= 2), none on biases and LayerNorms, as nanoGPT.

`optimizer: muon`, the default (model/train_config.py): PyTorch's own
`torch.optim.Muon` for the 2-D weights inside the transformer blocks
(attention and MLP projections: 12 C^2 per layer), and AdamW, as above, for
everything else: the token embedding (which is also the tied output head),
the position embedding, LayerNorms and biases. Muon's update is
orthogonalised by Newton-Schulz iterations, which only makes sense for a
hidden layer's matrix; embeddings and the head stay with AdamW, as in Keller
Jordan's and Moonshot's recipes. Muon's step is scaled with
`adjust_lr_fn="match_rms_adamw"` (Moonshot, "Muon is Scalable for LLM
Training"): its update has AdamW's RMS, so both halves share the run's `lr`,
schedule and `weight_decay`. Muon keeps one fp32 momentum buffer per weight
(4 B a parameter, against AdamW's 8).

Both halves are stepped as one `Optimizers`: the trainer sets the learning
rate on `param_groups`, the GradScaler unscales and steps it like any torch
optimizer, and its state_dict holds each half's, so a checkpoint resumes it
exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from model.train_config import Optimizer


class Optimizers:
    """Several torch optimizers over disjoint parameters, used as one."""

    def __init__(self, parts: dict[str, torch.optim.Optimizer]) -> None:
        self.parts = parts

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.parts.values() for g in opt.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, Any]:
        return {p: s for opt in self.parts.values() for p, s in opt.state.items()}

    def step(self) -> None:
        for opt in self.parts.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted(set(self.parts) - set(state))
        if missing:
            raise ValueError(f"optimizer state has no {', '.join(missing)} part")
        for name, opt in self.parts.items():
            opt.load_state_dict(state[name])


def parts(opt: torch.optim.Optimizer | Optimizers) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside (the GradScaler unscales and steps each)."""
    return list(opt.parts.values()) if isinstance(opt, Optimizers) else [opt]


def _adamw(
    groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], device_type: str
) -> torch.optim.AdamW:
    # fused kernel: one launch for all parameters instead of a loop over them
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device_type == "cuda")


def _decay_groups(params: Sequence[torch.Tensor], weight_decay: float) -> list[dict[str, Any]]:
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def muon_params(model: torch.nn.Module) -> Iterator[torch.nn.Parameter]:
    """The 2-D weights of the transformer blocks (`transformer.h.*`)."""
    for name, p in model.named_parameters():
        if p.requires_grad and p.dim() == 2 and name.startswith("transformer.h."):
            yield p


def build(
    model: torch.nn.Module,
    kind: Optimizer,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    device_type: str,
    sharded: bool = False,
) -> torch.optim.Optimizer | Optimizers:
    """The run's optimizer over `model`'s parameters (each once: the tied head is wte);
    `sharded` (FSDP2) takes model/fsdp.py's ShardedMuon for torch.optim.Muon."""
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    if kind == "adamw":
        return _adamw(_decay_groups(params, weight_decay), lr, betas, device_type)
    if kind != "muon":
        raise ValueError(f"optimizer must be adamw or muon, got {kind!r}")
    matrices: list[torch.Tensor] = list(muon_params(model))
    chosen = {id(p) for p in matrices}
    rest = [p for p in params if id(p) not in chosen]
    from model.muon_sharded import ShardedMuon

    muon = (ShardedMuon if sharded else torch.optim.Muon)(
        matrices,
        lr=lr,
        weight_decay=weight_decay,
        momentum=0.95,
        nesterov=True,
        adjust_lr_fn="match_rms_adamw",
    )
    return Optimizers(
        {"muon": muon, "adamw": _adamw(_decay_groups(rest, weight_decay), lr, betas, device_type)}
    )


def state_bytes(n_params: int, n_tensors: int, n_muon: int, n_muon_tensors: int) -> int:
    """Optimizer state: AdamW's exp_avg + exp_avg_sq (8 B) and a 4 B `step` per tensor;
    Muon's momentum buffer (4 B) for the parameters it takes, and no step."""
    adamw = 8 * (n_params - n_muon) + 4 * (n_tensors - n_muon_tensors)
    return adamw + 4 * n_muon
