"""`python -m pipeline export`: transformers loads the folder offline and agrees with codegpt."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from model import tokenizer as _tokenizer
from model.checkpoint import load_for_inference
from model.hf_export import byte_alphabet
from pipeline.__main__ import main
from pipeline.train import train
from tests.model.train_fixtures import tiny_config

N_IDS = _tokenizer.get().n_ids  # GPT-2's (the fixtures' tokenizer)
SPECIAL_TOKENS = _tokenizer.get().special_tokens  # GPT-2's (the fixtures' tokenizer)
encode = _tokenizer.get().encode  # GPT-2's (the fixtures' tokenizer)
encode_with_specials = _tokenizer.get().encode_with_specials  # GPT-2's (the fixtures' tokenizer)

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # trains a model over the full vocabulary first (~5 s)


def real_code() -> str:
    """Real Python source: a standard-library module as it is on this machine."""
    return Path(json.decoder.__file__).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, code_shards: Path) -> Path:
    """A tiny GPT over GPT-2's padded vocabulary, trained a few steps on GPT-2 shards of
    real code, then exported."""
    tmp = tmp_path_factory.mktemp("export")
    cfg = tiny_config(
        code_shards,
        tmp / "run",
        vocab_size=50304,
        block_size=256,
        micro_batch=1,
        grad_accum=1,
        max_iters=3,
        dropout=0.1,
    )
    assert train(cfg) == 0
    assert main(["export", f"out_dir={tmp / 'run'}"]) == 0
    return tmp / "run"


def test_the_export_folder_is_complete(exported: Path) -> None:
    hf = exported / "hf"
    names = {p.name for p in hf.iterdir()}
    assert names >= {"config.json", "model.safetensors", "vocab.json", "merges.txt"}
    assert not [p for p in exported.iterdir() if p.name.startswith(".hf")]  # no leftovers
    modes = {p.name: p.stat().st_mode & 0o777 for p in hf.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"]  # readable like the rest
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["vocab_size"] == N_IDS == 50261 and cfg["n_positions"] == 256
    assert cfg["activation_function"] == "gelu_new" and cfg["tie_word_embeddings"] is True


def test_transformers_gives_the_same_logits_on_real_code(exported: Path) -> None:
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(
        exported / "hf", local_files_only=True
    ).eval()
    ours, _, step = load_for_inference(exported)
    assert step == 3
    assert hf_model.lm_head.weight is hf_model.transformer.wte.weight  # tied on load
    ids = torch.tensor([encode(real_code())[:200]])  # (1, 200)
    with torch.no_grad():
        want, _ = ours(ids)
        got = hf_model(ids).logits  # (1, 200, 50261): GPT-2's ids and the FIM sentinels
    assert want is not None and got.shape == (1, 200, N_IDS)
    assert torch.allclose(got, want[..., :N_IDS], atol=1e-4, rtol=0)
    assert want[..., :N_IDS].std() > 0.1  # trained logits, not a constant


def test_the_tokenizer_files_give_our_ids(exported: Path) -> None:
    tok = transformers.GPT2TokenizerFast.from_pretrained(exported / "hf", local_files_only=True)
    texts = [real_code(), Path(torch.__file__).read_text(encoding="utf-8")[:20_000]]
    texts.append("naïve → 世界 🎉\n\t\tx  = 1  \r\n  ")
    for text in texts:
        assert tok(text)["input_ids"] == encode(text)
    assert tok.eos_token_id == 50256 and tok.decode(encode(texts[2])) == texts[2]


def test_the_fim_sentinels_are_special_tokens_at_their_ids(exported: Path) -> None:
    tok = transformers.GPT2TokenizerFast.from_pretrained(exported / "hf", local_files_only=True)
    for text, i in SPECIAL_TOKENS.items():
        assert tok.convert_tokens_to_ids(text) == i and tok(text)["input_ids"] == [i]
    prompt = "<fim_prefix>def f(x):\n    <fim_suffix>\n    return y\n<fim_middle>"
    assert tok(prompt)["input_ids"] == encode_with_specials(prompt)
    readme = (exported / "hf" / "README.md").read_text()
    assert "<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>" in readme
    assert "fim_rate 0" in readme  # this run was trained left to right: said so


def test_byte_alphabet_is_a_bijection_onto_printable_characters() -> None:
    table = byte_alphabet()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ"  # GPT-2's well-known space


def test_export_refuses_a_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", f"out_dir={tmp_path / 'none'}"]) == 2
    assert "train first" in capsys.readouterr().err
