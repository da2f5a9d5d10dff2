"""Training config: the keys of configs/gpt2-124m.yaml and configs/demo.yaml.

A keyword-only dataclass built by `model.config` (YAML + `key=value`). The tags
say what each key shapes: `model` (a checkpoint of another shape cannot be
resumed into this run) and `smoke` (what `make smoke` proves; `make train`
wants a smoke.ok for the same values). Neither list is written anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from model.config import Config, option

DType = Literal["auto", "bfloat16", "float16", "float32"]
Device = Literal["auto", "cuda", "cpu"]
# The head's loss (model/loss.py): fused (gradients made in forward, no recompute), lean
# (chunked, recomputes the logits in backward) or plain (full logits, for comparison).
Loss = Literal["fused", "lean", "plain"]
# AdamW, or Muon for the blocks' matrices and AdamW for the rest (model/optim.py)
Optimizer = Literal["adamw", "muon"]
# Recompute the blocks in backward (model/gpt.py): never, always, or as the planner rules
ActivationCheckpointing = Literal["none", "full", "auto"]
Parallel = Literal["ddp", "fsdp"]

MODEL = ("model", "smoke")  # a model-shape key is also part of what smoke proves
SMOKE = "smoke"


@dataclass(kw_only=True)
class TrainConfig(Config):
    # data and run folder
    data: str = option("data/shards/github-code", "shard folder (tokenize output)", affects=SMOKE)
    out_dir: str = option("out/gpt2-124m", "run folder: checkpoints, metrics, config")
    tokenizer: str = option(
        "auto",
        "the shards' tokenizer (gpt2, p50k: model/tokenizer.py); auto = what their manifest "
        "names (model/dataset.py resolve_tokenizer), a name = a check that they are",
    )
    shuffle: bool = option(
        True, "visit the train windows in a shuffled order, a new one each epoch; false = stream"
    )
    allow_partial: bool = option(
        False, "train on a shard folder whose tokenize has not finished (says so)"
    )
    fim_rate: float = option(
        0.5,
        "share of documents made fill-in-the-middle examples at train time (model/fim.py); "
        "0 = left to right only",
        affects=SMOKE,
        ge=0,
        le=1,
    )
    fim_spm_rate: float = option(
        0.5, "share of the FIM examples laid out SPM rather than PSM", affects=SMOKE, ge=0, le=1
    )
    # model shape (GPT-2 124M by default)
    n_layer: int = option(12, "transformer blocks", affects=MODEL, ge=1)
    n_head: int = option(12, "attention heads", affects=MODEL, ge=1)
    n_embd: int = option(768, "model width", affects=MODEL, ge=1)
    block_size: int = option(1024, "context length T", affects=MODEL, ge=1)
    vocab_size: int = option(50304, "50257 padded up to a multiple of 64", affects=MODEL, ge=1)
    dropout: float = option(0.0, "dropout probability", affects=SMOKE, ge=0, lt=1)
    # batch and optimizer
    micro_batch: int | Literal["auto"] = option(
        4, "sequences per forward pass, or auto", affects=SMOKE, ge=1
    )
    grad_accum: int = option(8, "micro-batches per optimizer step (all ranks)", affects=SMOKE, ge=1)
    batch_size: int = option(
        32,
        "sequences per optimizer step, all ranks, used when micro_batch is auto: "
        "micro_batch x grad_accum is made equal to it",
        affects=SMOKE,
        ge=1,
    )
    lr: float = option(6e-4, "peak learning rate")
    min_lr: float = option(6e-5, "learning rate at the end of the cosine")
    warmup_iters: int = option(2000, "linear warmup steps", ge=0)
    max_iters: int = option(427_000, "optimizer steps in the run", ge=1)
    optimizer: Optimizer = option(
        "muon",
        "muon: torch.optim.Muon for the blocks' 2-D weights, AdamW for the embeddings (and "
        "tied head), norms and biases; or adamw for all (model/optim.py)",
        affects=SMOKE,
    )
    weight_decay: float = option(0.1, "weight decay on 2-D weights (AdamW and Muon)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    grad_clip: float = option(1.0, "max gradient norm; 0 disables")
    # evaluation, checkpoints, logging
    eval_interval: int = option(1000, "steps between evals", ge=1)
    eval_iters: int = option(50, "val batches per eval", ge=1)
    ckpt_interval: int = option(1000, "steps between checkpoints", ge=1)
    keep_ckpts: int = option(3, "newest checkpoints kept", ge=1)
    log_interval: int = option(10, "steps between metric lines", ge=1)
    max_bad_steps: int = option(5, "non-finite steps in a row that stop the run", ge=1)
    # hardware
    dtype: DType = option("auto", "bfloat16, float16, float32 or auto", affects=SMOKE)
    compile: bool = option(True, "torch.compile the model (GPU only)", affects=SMOKE)
    device: Device = option("auto", "auto, cuda or cpu", affects=SMOKE)
    peak_tflops: float = option(0.0, "override the GPU's peak dense TFLOPS for MFU")
    loss: Loss = option(
        "fused",
        "the head's loss: fused (no (N, V) logits, no recompute), lean (chunked, recomputes "
        "in backward) or plain (full logits)",
        affects=SMOKE,
    )
    loss_chunk: int = option(
        0, "positions per chunk of the fused and lean losses; 0 = auto", affects=SMOKE
    )
    activation_checkpointing: ActivationCheckpointing = option(
        "auto",
        "recompute each block in backward: none, full, or auto (full only where the GPU "
        "would otherwise fit too small a micro-batch; model/autobatch.py)",
    )
    parallel: Parallel = option(
        "ddp",
        "under torchrun: ddp (every rank holds the whole model) or fsdp (FSDP2: weights, "
        "gradients and optimizer state sharded over the ranks; model/fsdp.py)",
    )
    tensorboard: bool = option(True, "also write TensorBoard scalars to out/<run>/tb/")
    seed: int = option(1337, "random seed")
    # smoke stage
    smoke_steps: int = option(10, "optimizer steps in `make smoke`", ge=1)
    smoke_tolerance: float = option(0.35, "allowed |initial val loss - ln V|")
    smoke_min_drop: float = option(0.5, "required first - last loss")

    def checks(self) -> list[str]:
        out = super().checks()
        if self.n_head >= 1 and self.n_embd % self.n_head != 0:
            out.append(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.min_lr > self.lr:
            out.append(f"min_lr={self.min_lr} must not exceed lr={self.lr}")
        return out

    @property
    def tokens_per_step(self) -> int:
        """All ranks; with micro_batch auto, batch_size sequences (what it resolves to)."""
        if isinstance(self.micro_batch, int):
            return self.micro_batch * self.grad_accum * self.block_size
        return self.batch_size * self.block_size
