"""A codegpt checkpoint as a Hugging Face `GPT2LMHeadModel` folder, written offline.

The network is GPT-2's, parameter for parameter, with three differences in
how the weights are stored:

- HF's GPT-2 uses `Conv1D` for c_attn, c_proj and c_fc: y = x W + b with W
  (in, out), where `nn.Linear` keeps (out, in). Those weights are transposed.
- Our vocabulary is padded from the tokenizer's (50257 for gpt2, 50281 for p50k)
  to `vocab_size` (50304) rows for fast matmuls; the rows past the four FIM
  sentinels (gpt2: 50257-50260, p50k: 50281-50284) are never targets, so they
  are cropped to `Tokenizer.n_ids` (50261 or 50285). The sentinels are added
  special tokens of the tokenizer at their ids (`GPT2TokenizerFast` encodes
  `<fim_prefix>` to 50257 for gpt2, 50281 for p50k).
- The head is tied to `wte` (`tie_word_embeddings: true`), so only
  `transformer.wte.weight` is stored and transformers ties `lm_head` on load.

The activation is `nn.GELU(approximate="tanh")`, which is HF's `gelu_new`;
LayerNorm eps is PyTorch's default 1e-5, HF's `layer_norm_epsilon` default.

Tokenizer files: `vocab.json` and `merges.txt` are rebuilt from our tiktoken
ranks. Byte-level BPE merges tokens in rank order, so the merge that made the
token of rank r is found by running BPE on its bytes with only the merges of
rank < r: exactly two parts remain, and they are that merge. Tokens are
written in GPT-2's printable byte alphabet (`byte_alphabet`). p50k's space runs
come out as merges like any other token ("ĠĠ Ġ" makes three spaces), so
transformers' byte-level BPE encodes indentation as tiktoken does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor

from model import tokenizer
from model.atomic import fsync_dir
from model.gpt import GPT
from model.tokenizer import EOT_TEXT, Tokenizer
from model.train_config import TrainConfig

# nn.Linear weights stored as HF Conv1D (transposed); the names are the same in both.
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
WEIGHTS = "model.safetensors"


def hf_config(cfg: TrainConfig) -> dict[str, Any]:
    tok = tokenizer.get(cfg.tokenizer)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": tok.n_ids,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,  # 4 * n_embd, as in model/gpt.py's MLP
        "activation_function": "gelu_new",  # the tanh approximation
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,  # softmax(q k^T / sqrt(hs)), as SDPA does
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": tok.eot,
        "eos_token_id": tok.eot,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def hf_state_dict(model: GPT) -> dict[str, Tensor]:
    """Our state dict under HF's names: Conv1D weights transposed, vocabulary cropped, no head."""
    n_ids = tokenizer.get(model.cfg.tokenizer).n_ids
    if model.cfg.vocab_size < n_ids:
        raise ValueError(
            f"vocab_size={model.cfg.vocab_size} < {n_ids}: not a {model.cfg.tokenizer} model "
            "with its sentinels"
        )
    out: dict[str, Tensor] = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # the same tensor as wte; tied again on load
        t = t.detach().float().cpu()
        if name == "transformer.wte.weight":
            t = t[:n_ids]  # (50304, C) -> (n_ids, C): the tokenizer's ids and the sentinels
        elif name.endswith(CONV1D):
            t = t.t()  # (out, in) -> (in, out)
        out[name] = t.contiguous().clone()
    return out


# --- tokenizer files -------------------------------------------------------


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes stand for
    themselves, the other 68 bytes (controls, space, ...) take 256, 257, ... in order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def _merge_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair whose merge made `token`: BPE on its bytes with the merges ranked below it."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], rank)
            if r < best_rank:
                best_rank, best_i = r, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    assert len(parts) == 2, f"rank {rank}: {token!r} splits into {len(parts)} parts"
    return parts[0], parts[1]


def tokenizer_files(tok: Tokenizer, block_size: int) -> dict[str, str]:
    """File name -> text of vocab.json, merges.txt and the tokenizer configs."""
    ids = [i for i in range(tok.n_vocab) if i != tok.eot]  # the BPE's own tokens
    ranks = {tok.token_bytes(i): i for i in ids}  # bytes -> id
    alpha = byte_alphabet()

    def show(b: bytes) -> str:
        return "".join(alpha[x] for x in b)

    vocab = {show(tok): i for tok, i in ranks.items()}
    vocab.update(tok.special_tokens)  # <|endoftext|> and the FIM sentinels at their ids
    merges = [
        f"{show(a)} {show(b)}"
        for tok, r in sorted(ranks.items(), key=lambda kv: kv[1])
        if len(tok) > 1
        for a, b in [_merge_of(tok, r, ranks)]
    ]
    fim = [t for t in tok.special_tokens if t != EOT_TEXT]
    special = {
        "bos_token": EOT_TEXT,
        "eos_token": EOT_TEXT,
        "unk_token": EOT_TEXT,
        "additional_special_tokens": fim,
    }
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": True,
        }
        for t, i in tok.special_tokens.items()
    }
    tok_cfg = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": block_size,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        **special,
    }
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps(tok_cfg, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }


# --- the folder ---------------------------------------------------------------


def _readme(cfg: TrainConfig, step: int, source: Path) -> str:
    tok = tokenizer.get(cfg.tokenizer)
    what = {
        "gpt2": "GPT-2's byte-level BPE (`gpt2`, r50k: 50257 ids",
        "p50k": "Codex's byte-level BPE (`p50k`, OpenAI's p50k_base: GPT-2's 50257 ids and "
        "24 tokens for runs of 2 to 25 spaces at 50257-50280, 50281 ids",
    }[tok.name]
    sentinels = ", ".join(f"`{t}` {i}" for t, i in tok.special_tokens.items() if t != EOT_TEXT)
    return (
        f"# codegpt export\n\nGPT-2 ({cfg.n_layer} layers, {cfg.n_head} heads, width "
        f"{cfg.n_embd}, context {cfg.block_size}) trained with codegpt on source code; "
        f"step {step} of `{source}`.\n\n"
        "    from transformers import GPT2LMHeadModel, GPT2TokenizerFast\n"
        "    model = GPT2LMHeadModel.from_pretrained(path)\n"
        f"    tok = GPT2TokenizerFast.from_pretrained(path)  # {tok.name}\n\n"
        f"The tokenizer is {what}, `<|endoftext|>` = {tok.eot});\n"
        "codegpt encodes source text as plain text, `<|endoftext|>` only between documents.\n"
        "\n## Fill in the middle\n\n"
        + (
            f"Trained with fill-in-the-middle (fim_rate {cfg.fim_rate}, SPM share "
            f"{cfg.fim_spm_rate}). "
            if cfg.fim_rate > 0
            else "Trained left to right only (fim_rate 0): the sentinels below are untrained. "
        )
        + f"The sentinels are added special tokens: {sentinels}. To fill in the code between\n"
        "`prefix` and `suffix`, give the PSM prompt\n\n"
        "    <fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>\n\n"
        "and generate: the middle follows, ended by `<|endoftext|>`.\n"
    )


def export(model: GPT, cfg: TrainConfig, step: int, source: Path, dest: Path) -> Path:
    """Write `dest/` (config.json, model.safetensors, tokenizer files, README.md) atomically."""
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(hf_state_dict(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp / WEIGHTS, 0o666 & ~umask)  # safetensors creates it owner-only
        files = {"config.json": json.dumps(hf_config(cfg), indent=2) + "\n"}
        files.update(tokenizer_files(tokenizer.get(cfg.tokenizer), cfg.block_size))
        files["README.md"] = _readme(cfg, step, source)
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        if dest.exists():
            os.replace(dest, old)  # a reader sees the old folder or the new one
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return dest
