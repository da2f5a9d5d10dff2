"""`python -m pipeline sample`: text from a run's newest checkpoint, streamed to stdout.

The checkpoint carries its own training config (model shape, dtype), so the
run folder (or one checkpoint file, `ckpt=`) is all that is needed. Tokens are
printed as they are sampled; each sample ends at `<|endoftext|>` or after
`max_new_tokens`. The same seed gives the same text on the same device.
Generation and its KV cache live in model/generate.py.

With `suffix`, the model fills in the middle (a run trained with fim_rate > 0):
the prompt is PSM, `<fim_prefix> prompt <fim_suffix> suffix <fim_middle>`
(model/fim.py), the middle ends at end-of-text or a sentinel, and the text is
printed as prompt + middle + suffix with the middle between MARK's two halves
(coloured instead when stdout is a terminal).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import Config, option
from model.errors import InputError
from model.train_config import Device, DType

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/sample.yaml"
SEPARATOR = "\n" + "-" * 40 + "\n"
MARK = ("⟪", "⟫")  # the middle of a fill-in-the-middle sample: ⟪middle⟫
TTY_MARK = ("\033[7m", "\033[0m")  # reverse video on a terminal


@dataclass(kw_only=True)
class SampleConfig(Config):
    out_dir: str = option("out/gpt2-124m", "run folder; its newest checkpoint")
    ckpt: str = option("", "one checkpoint file instead of out_dir's newest")
    prompt: str = option("", "text to continue; empty = from <|endoftext|>")
    prompt_file: str = option("", "read the prompt from this file instead")
    suffix: str = option(
        "", "text after the cursor: the model fills in the middle between prompt and suffix"
    )
    escapes: bool = option(
        True, "read \\n, \\t, \\r and \\\\ in prompt= and suffix= as escapes (not in prompt_file)"
    )
    num_samples: int = option(1, "samples to draw, one after another", ge=1)
    max_new_tokens: int = option(500, "new tokens per sample at most", ge=1)
    temperature: float = option(0.8, "softmax temperature; 0 = greedy", ge=0)
    top_k: int = option(200, "sample among the k likeliest tokens; 0 = all", ge=0)
    top_p: float = option(1.0, "nucleus: smallest set with this mass; 1 = off", gt=0, le=1)
    seed: int = option(1337, "random seed; the same seed gives the same text")
    device: Device = option("auto", "auto, cuda or cpu")
    dtype: DType = option("auto", "auto (the run's dtype), bfloat16, float16 or float32")

    def checks(self) -> list[str]:
        out = super().checks()
        if self.prompt and self.prompt_file:
            out.append("prompt and prompt_file are both set; give one")
        return out


CONFIG = SampleConfig


ESCAPES = re.compile(r"\\([ntr\\])")
ESCAPED = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    """`\\n` -> a newline, and so on: a shell's command line has no other way to say it."""
    return ESCAPES.sub(lambda m: ESCAPED[m.group(1)], text)


def read_prompt(cfg: SampleConfig) -> str:
    if not cfg.prompt_file:
        return unescape(cfg.prompt) if cfg.escapes else cfg.prompt
    path = Path(cfg.prompt_file)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"prompt_file {path} not found; give an existing file") from None
    except UnicodeDecodeError:
        raise InputError(f"prompt_file {path} is not UTF-8 text") from None


def checkpoint_target(cfg: SampleConfig) -> Path:
    target = Path(cfg.ckpt or cfg.out_dir)
    if not target.exists():
        what = "ckpt" if cfg.ckpt else "out_dir"
        raise InputError(
            f"{what}={target}: no such checkpoint or run folder; train first (`make train`) "
            "or point out_dir= at a run folder"
        )
    return target


def _one_sample(
    text: str, tokens: Iterator[int], what: str, tok: Any, suffix: str | None = None
) -> None:
    """Print the prompt, then each new token's text as soon as it is sampled (then, for a
    fill-in-the-middle sample, the end of the mark and the suffix)."""
    from model.generate import StreamDecoder

    out = sys.stdout
    mark = TTY_MARK if out.isatty() else MARK
    out.write(text + (mark[0] if suffix is not None else ""))
    out.flush()
    decoder = StreamDecoder(tok)
    t0, n = time.perf_counter(), 0
    for t in tokens:  # sampled lazily, one at a time
        out.write(decoder.push(t))
        out.flush()
        n += 1
    out.write(decoder.flush() + ("\n" if suffix is None else mark[1] + suffix))
    out.flush()
    secs = time.perf_counter() - t0
    log.info("%s: %d tokens, %.1f tokens/s", what, n, n / secs if secs > 0 else 0.0)


def run(cfg: SampleConfig) -> int:
    import torch  # only when the stage runs

    from model.checkpoint import load_for_inference
    from model.fim import psm_prompt
    from model.generate import Sampling, generate, tokenizer_of
    from model.runtime import replace, resolve_device, resolve_precision

    target = checkpoint_target(cfg)
    text = read_prompt(cfg)
    model, train_cfg, step = load_for_inference(target, map_location="cpu")
    device = resolve_device(replace(train_cfg, device=cfg.device))
    dtype = train_cfg.dtype if cfg.dtype == "auto" else cfg.dtype
    if device.type == "cpu" and dtype == "float16":
        log.info("float16 needs a GPU; sampling in float32 on the CPU")
        dtype = "float32"
    precision = resolve_precision(replace(train_cfg, dtype=dtype), device)
    model.to(device)
    fim = bool(cfg.suffix)
    suffix = unescape(cfg.suffix) if cfg.escapes else cfg.suffix
    if fim and train_cfg.fim_rate == 0:
        raise InputError(
            f"{target}: this run was trained with fim_rate=0, so it cannot fill in the middle; "
            "drop suffix= or train a run with fim_rate > 0 (the default)"
        )
    tok = tokenizer_of(model)  # the checkpoint's
    prompt = psm_prompt(tok, text, suffix) if fim else tok.encode(text) if text else [tok.eot]
    sampling = Sampling(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    cache_dtype = torch.float32 if precision.name == "float32" else getattr(torch, precision.name)
    log.info("step %d model on %s, %s; prompt %d tokens", step, device, precision.name, len(prompt))
    try:
        for i in range(cfg.num_samples):
            if i:
                sys.stdout.write(SEPARATOR)
            _one_sample(
                text,
                generate(
                    model,
                    prompt,
                    cfg.max_new_tokens,
                    sampling,
                    generator=gen,
                    fim=fim,
                    autocast=precision.autocast,
                    cache_dtype=cache_dtype,
                ),
                f"sample {i + 1}/{cfg.num_samples}",
                tok,
                suffix if fim else None,
            )
    except BrokenPipeError:  # `... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
