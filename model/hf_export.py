"""A codegpt checkpoint as a Hugging Face `GPT2LMHeadModel` folder, written offline.

The network is GPT-2's, parameter for parameter, with three differences in
how the weights are stored:

- HF's GPT-2 uses `Conv1D` for c_attn, c_proj and c_fc: y = x W + b with W
  (in, out), where `nn.Linear` keeps (out, in). Those weights are transposed.
- Our vocabulary is padded from 50257 to `vocab_size` (50304) rows for fast
  matmuls; the rows past the four FIM sentinels (50257-50260) are never
  targets, so they are cropped to 50261. The sentinels are added special
  tokens of the tokenizer at their ids (`GPT2TokenizerFast` encodes
  `<fim_prefix>` to 50257).
- The head is tied to `wte` (`tie_word_embeddings: true`), so only
  `transformer.wte.weight` is stored and transformers ties `lm_head` on load.

The activation is `nn.GELU(approximate="tanh")`, which is HF's `gelu_new`;
LayerNorm eps is PyTorch's default 1e-5, HF's `layer_norm_epsilon` default.

Tokenizer files: `vocab.json` and `merges.txt` are rebuilt from our tiktoken
ranks. Byte-level BPE merges tokens in rank order, so the merge that made the
token of rank r is found by running BPE on its bytes with only the merges of
rank < r: exactly two parts remain, and they are that merge. Tokens are
written in GPT-2's printable byte alphabet (`byte_alphabet`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor

from model.atomic import fsync_dir
from model.gpt import GPT
from model.tokenizer import EOT, EOT_TEXT, N_IDS, SPECIAL_TOKENS, get_encoding
from model.train_config import TrainConfig

# nn.Linear weights stored as HF Conv1D (transposed); the names are the same in both.
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
WEIGHTS = "model.safetensors"


def hf_config(cfg: TrainConfig) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": N_IDS,
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
        "bos_token_id": EOT,
        "eos_token_id": EOT,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def hf_state_dict(model: GPT) -> dict[str, Tensor]:
    """Our state dict under HF's names: Conv1D weights transposed, vocabulary cropped, no head."""
    if model.cfg.vocab_size < N_IDS:
        raise ValueError(
            f"vocab_size={model.cfg.vocab_size} < {N_IDS}: not a GPT-2 model with its sentinels"
        )
    out: dict[str, Tensor] = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # the same tensor as wte; tied again on load
        t = t.detach().float().cpu()
        if name == "transformer.wte.weight":
            t = t[:N_IDS]  # (50304, C) -> (50261, C): GPT-2's ids and the FIM sentinels
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


def tokenizer_files(block_size: int) -> dict[str, str]:
    """File name -> text of vocab.json, merges.txt and the tokenizer configs."""
    enc = get_encoding()
    ranks = {enc.decode_single_token_bytes(i): i for i in range(EOT)}  # bytes -> id
    alpha = byte_alphabet()

    def show(b: bytes) -> str:
        return "".join(alpha[x] for x in b)

    vocab = {show(tok): i for tok, i in ranks.items()}
    vocab.update(SPECIAL_TOKENS)  # <|endoftext|> and the FIM sentinels at their ids
    merges = [
        f"{show(a)} {show(b)}"
        for tok, r in sorted(ranks.items(), key=lambda kv: kv[1])
        if len(tok) > 1
        for a, b in [_merge_of(tok, r, ranks)]
    ]
    fim = [t for t in SPECIAL_TOKENS if t != EOT_TEXT]
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
        for t, i in SPECIAL_TOKENS.items()
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
    return (
        f"# codegpt export\n\nGPT-2 ({cfg.n_layer} layers, {cfg.n_head} heads, width "
        f"{cfg.n_embd}, context {cfg.block_size}) trained with codegpt on source code; "
        f"step {step} of `{source}`.\n\n"
        "    from transformers import GPT2LMHeadModel, GPT2TokenizerFast\n"
        "    model = GPT2LMHeadModel.from_pretrained(path)\n"
        "    tok = GPT2TokenizerFast.from_pretrained(path)  # GPT-2's BPE\n\n"
        "The tokenizer is GPT-2's byte-level BPE (50257 ids, `<|endoftext|>` = 50256);\n"
        "codegpt encodes source text as plain text, `<|endoftext|>` only between documents.\n"
        "\n## Fill in the middle\n\n"
        + (
            f"Trained with fill-in-the-middle (fim_rate {cfg.fim_rate}, SPM share "
            f"{cfg.fim_spm_rate}). "
            if cfg.fim_rate > 0
            else "Trained left to right only (fim_rate 0): the sentinels below are untrained. "
        )
        + "The sentinels are added special tokens: `<fim_prefix>` 50257, `<fim_middle>` 50258,\n"
        "`<fim_suffix>` 50259, `<fim_pad>` 50260. To fill in the code between `prefix` and\n"
        "`suffix`, give the PSM prompt\n\n"
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
        files.update(tokenizer_files(cfg.block_size))
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
