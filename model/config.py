"""Training config: the keys of configs/gpt2-124m.yaml and configs/demo.yaml.

A keyword-only dataclass; `pipeline.config.load` fills it from YAML and
`key=value` overrides, and `__post_init__` checks the values together, raising
one `ConfigError` that names every bad key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import ConfigError


def _h(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(kw_only=True)
class TrainConfig:
    # data and run folder
    data: str = field(
        default="data/shards/github-code", metadata=_h("shard folder (tokenize output)")
    )
    out_dir: str = field(
        default="out/gpt2-124m", metadata=_h("run folder: checkpoints, metrics, config")
    )
    # model shape (GPT-2 124M by default)
    n_layer: int = field(default=12, metadata=_h("transformer blocks"))
    n_head: int = field(default=12, metadata=_h("attention heads"))
    n_embd: int = field(default=768, metadata=_h("model width"))
    block_size: int = field(default=1024, metadata=_h("context length T"))
    vocab_size: int = field(default=50304, metadata=_h("50257 padded up to a multiple of 64"))
    dropout: float = field(default=0.0, metadata=_h("dropout probability"))
    # batch and optimizer
    micro_batch: int | str = field(default=4, metadata=_h("sequences per forward pass, or auto"))
    grad_accum: int = field(default=8, metadata=_h("micro-batches per optimizer step (all ranks)"))
    batch_size: int = field(
        default=32,
        metadata=_h(
            "sequences per optimizer step, all ranks, used when micro_batch is auto: "
            "micro_batch x grad_accum is made equal to it"
        ),
    )
    lr: float = field(default=6e-4, metadata=_h("peak learning rate"))
    min_lr: float = field(default=6e-5, metadata=_h("learning rate at the end of the cosine"))
    warmup_iters: int = field(default=2000, metadata=_h("linear warmup steps"))
    max_iters: int = field(default=427_000, metadata=_h("optimizer steps in the run"))
    weight_decay: float = field(default=0.1, metadata=_h("AdamW weight decay on 2-D weights"))
    beta1: float = field(default=0.9, metadata=_h("AdamW beta1"))
    beta2: float = field(default=0.95, metadata=_h("AdamW beta2"))
    grad_clip: float = field(default=1.0, metadata=_h("max gradient norm; 0 disables"))
    # evaluation, checkpoints, logging
    eval_interval: int = field(default=1000, metadata=_h("steps between evals"))
    eval_iters: int = field(default=50, metadata=_h("val batches per eval"))
    ckpt_interval: int = field(default=1000, metadata=_h("steps between checkpoints"))
    keep_ckpts: int = field(default=3, metadata=_h("newest checkpoints kept"))
    log_interval: int = field(default=10, metadata=_h("steps between metric lines"))
    max_bad_steps: int = field(
        default=5, metadata=_h("non-finite steps in a row that stop the run")
    )
    # hardware
    dtype: str = field(default="auto", metadata=_h("bfloat16, float16, float32 or auto"))
    compile: bool = field(default=True, metadata=_h("torch.compile the model (GPU only)"))
    device: str = field(default="auto", metadata=_h("auto, cuda or cpu"))
    peak_tflops: float = field(
        default=0.0, metadata=_h("override the GPU's peak dense TFLOPS for MFU")
    )
    loss_chunk: int = field(
        default=0, metadata=_h("positions per chunk of the lean loss; 0 = auto")
    )
    seed: int = field(default=1337, metadata=_h("random seed"))
    # smoke stage
    smoke_steps: int = field(default=10, metadata=_h("optimizer steps in `make smoke`"))
    smoke_tolerance: float = field(default=0.35, metadata=_h("allowed |first loss - ln V|"))
    smoke_min_drop: float = field(default=0.5, metadata=_h("required first - last loss"))

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.n_embd % max(self.n_head, 1) != 0:
            problems.append(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        for key in (
            "n_layer",
            "n_head",
            "n_embd",
            "block_size",
            "vocab_size",
            "grad_accum",
            "batch_size",
            "max_iters",
            "eval_iters",
            "keep_ckpts",
            "log_interval",
            "max_bad_steps",
            "eval_interval",
            "ckpt_interval",
            "smoke_steps",
        ):
            if getattr(self, key) < 1:
                problems.append(f"{key}={getattr(self, key)} must be >= 1")
        if isinstance(self.micro_batch, str) and self.micro_batch != "auto":
            problems.append(f"micro_batch={self.micro_batch!r} must be a positive integer or auto")
        if isinstance(self.micro_batch, int) and self.micro_batch < 1:
            problems.append(f"micro_batch={self.micro_batch} must be >= 1")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            problems.append(f"dtype={self.dtype!r} must be bfloat16, float16, float32 or auto")
        if self.device not in ("auto", "cuda", "cpu"):
            problems.append(f"device={self.device!r} must be auto, cuda or cpu")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout={self.dropout} must be in [0, 1)")
        if self.min_lr > self.lr:
            problems.append(f"min_lr={self.min_lr} must not exceed lr={self.lr}")
        if self.warmup_iters < 0:
            problems.append(f"warmup_iters={self.warmup_iters} must be >= 0")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def tokens_per_step(self) -> int:
        mb = self.micro_batch if isinstance(self.micro_batch, int) else 0
        return mb * self.grad_accum * self.block_size
