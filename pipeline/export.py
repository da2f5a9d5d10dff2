"""`python -m pipeline export`: a run's newest checkpoint as a Hugging Face GPT-2 folder.

Writes `<out_dir>/hf/` (or `dest=`): config.json, model.safetensors and the
GPT-2 tokenizer files, which `transformers.GPT2LMHeadModel.from_pretrained`
and `GPT2TokenizerFast.from_pretrained` load offline. The conversion is in
model/hf_export.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model.config import Config, option
from model.errors import InputError

DEFAULT_CONFIG = None


@dataclass(kw_only=True)
class ExportConfig(Config):
    out_dir: str = option("out/gpt2-124m", "run folder to export")
    ckpt: str = option("", "one checkpoint file instead of the newest")
    dest: str = option("", "output folder; empty = hf/ in the run folder")


CONFIG = ExportConfig


def run(cfg: ExportConfig) -> int:
    from model import tokenizer
    from model.checkpoint import load_for_inference
    from model.hf_export import export

    source = Path(cfg.ckpt or cfg.out_dir)
    model, train_cfg, step = load_for_inference(source)
    n_ids = tokenizer.get(train_cfg.tokenizer).n_ids
    if train_cfg.vocab_size < n_ids:
        raise InputError(
            f"{source}: vocab_size={train_cfg.vocab_size} is smaller than {train_cfg.tokenizer}'s "
            f"{n_ids} ids (its sentinels included); only runs with a row for every id can be "
            "exported"
        )
    run_dir = source.parent if source.is_file() else source
    dest = Path(cfg.dest) if cfg.dest else run_dir / "hf"
    export(model, train_cfg, step, source, dest)
    print(f"exported step {step} to {dest}/ (GPT2LMHeadModel.from_pretrained({str(dest)!r}))")
    return 0
