"""Codex's tokenizer end to end: a folder of real code tokenized with `tokenizer=p50k`, a tiny
run trained with FIM on it, then sample, serve, eval, export and humaneval, each reading the
tokenizer from the shards' manifest or the checkpoint (never a constant), and a run of one
tokenizer refused on shards of the other."""

from __future__ import annotations

import json
import os
import sysconfig
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model import tokenizer
from model.checkpoint import load_for_inference
from model.errors import InputError, StateError
from model.fim import psm_prompt
from model.generate import Sampling, generate, generate_batch
from model.loader import make_loaders
from model.manifest import read_manifest
from model.shards import list_shards, open_shard
from pipeline.__main__ import main
from pipeline.sample import MARK
from pipeline.tokenize.progress import bytes_per_token
from pipeline.train import train
from tests.model.train_fixtures import tiny_config

P50K, GPT2 = tokenizer.get("p50k"), tokenizer.get("gpt2")
GREEDY = Sampling(temperature=0)


def write_tree(root: Path) -> list[str]:
    """Eight folders ("repositories") of this Python's standard library modules, cut to
    4000 characters each (real indentation): the texts, in no particular order."""
    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:64]
    texts = []
    for i, p in enumerate(paths):
        text = p.read_text(encoding="utf-8", errors="replace")[:4000]
        dest = root / f"repo{i % 8}" / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")
        texts.append(text)
    return texts


def tokenize(src: Path, out: Path, name: str) -> int:
    return main(
        [
            "tokenize",
            f"input={src}",
            "schema=files",
            f"tokenizer={name}",
            f"output={out}",
            "near_dedup=",
            "val_fraction=0.25",
            "shard_tokens=50000",
            "workers=1",
            "progress_seconds=0",
        ]
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The tree tokenized both ways, and a tiny FIM run trained 4 steps on the p50k shards."""
    os.environ["CODEGPT_SKIP_SMOKE_CHECK"] = "1"
    tmp = tmp_path_factory.mktemp("p50k")
    texts = write_tree(tmp / "src")
    assert tokenize(tmp / "src", tmp / "p50k", "p50k") == 0
    assert tokenize(tmp / "src", tmp / "gpt2", "gpt2") == 0
    cfg = tiny_config(
        tmp / "p50k", tmp / "run", vocab_size=50304, block_size=64, fim_rate=0.5, max_iters=4
    )
    assert train(cfg) == 0
    return SimpleNamespace(tmp=tmp, texts=texts, cfg=cfg, run=tmp / "run")


def stream(folder: Path) -> np.ndarray:
    return np.concatenate(
        [np.asarray(open_shard(p)) for s in ("train", "val") for p in list_shards(folder, s)]
    )


def test_the_manifest_records_p50k_and_the_shards_are_its_ids(made: SimpleNamespace) -> None:
    m = read_manifest(made.tmp / "p50k")
    assert m is not None and m.tokenizer == P50K.record()
    ids = stream(made.tmp / "p50k")
    docs = [P50K.decode(d[:-1].tolist()) for d in np.split(ids, np.flatnonzero(ids == 50256) + 1)]
    assert sorted(docs[:-1]) == sorted(made.texts)  # every file, decoded with p50k
    assert ((ids >= 50257) & (ids <= 50280)).any() and ids.max() <= 50280  # runs, no sentinel
    g = read_manifest(made.tmp / "gpt2")
    assert (
        g is not None and g.tokenizer["name"] == "gpt2" and stream(made.tmp / "gpt2").max() < 50257
    )
    # the report's bytes per token: the same bytes, a third fewer tokens for Python
    p, q = (per_language(bytes_per_token(x.counts)) for x in (m, g))
    assert p.keys() == q.keys() >= {"Python", "all"}
    assert p["Python"] > 1.3 * q["Python"], (p, q)


def per_language(line: str) -> dict[str, float]:
    """'Python 3.10, all 3.10' -> {'Python': 3.1, 'all': 3.1}."""
    return {k: float(v) for k, v in (part.rsplit(" ", 1) for part in line.split(", "))}


def test_the_run_takes_p50k_from_the_manifest_and_fim_uses_its_sentinels(
    made: SimpleNamespace,
) -> None:
    _, cfg, _ = load_for_inference(made.run)
    assert cfg.tokenizer == "p50k"  # tokenizer: auto, resolved from the shards
    loader, _ = make_loaders(replace(made.cfg, tokenizer="p50k"), 0, 1, torch.device("cpu"))
    x = torch.cat([loader.next_batch()[0] for _ in range(8)])
    for sentinel in (P50K.fim_prefix, P50K.fim_middle, P50K.fim_suffix):
        assert (x == sentinel).any()
    assert int(x.max()) <= P50K.fim_pad  # 50284


def test_a_run_of_one_tokenizer_is_refused_on_shards_of_the_other(made: SimpleNamespace) -> None:
    gpt2 = made.tmp / "gpt2"
    with pytest.raises(InputError, match=r"these shards are p50k tokens, but tokenizer=gpt2"):
        train(replace(made.cfg, tokenizer="gpt2", out_dir=str(made.tmp / "other")))
    # the p50k run resumed on the gpt2 shards: its checkpoint names p50k, the shards gpt2
    with pytest.raises(StateError, match=r"these shards are gpt2 tokens, but .*ckpt-\d+\.pt was "):
        train(replace(made.cfg, data=str(gpt2), max_iters=8))
    assert main(["eval", f"out_dir={made.run}", f"data={gpt2}", "max_tokens=64"]) == 2


def test_sample_with_a_suffix_is_p50ks_psm_prompt(
    made: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix, suffix = "def f(x):\n        ", "\n        return y\n"
    args = [f"prompt={prefix}", f"suffix={suffix}", "temperature=0", "max_new_tokens=6"]
    capsys.readouterr()
    assert main(["sample", f"out_dir={made.run}", "escapes=false", *args]) == 0
    model, _, _ = load_for_inference(made.run)
    want = list(generate(model, psm_prompt(P50K, prefix, suffix), 6, GREEDY, fim=True))
    assert capsys.readouterr().out == f"{prefix}{MARK[0]}{P50K.decode(want)}{MARK[1]}{suffix}"


def test_the_server_encodes_with_p50k(made: SimpleNamespace) -> None:
    openai = pytest.importorskip("openai")
    from tests.pipeline.serve.conftest import start, stop

    server = start(made.run, made.tmp / "server.log")
    try:
        c = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=30)
        prompt = "class A:\n    def f(self):\n        "
        out = c.completions.create(model="run", prompt=prompt, max_tokens=5, temperature=0)
        model, _, _ = load_for_inference(made.run)
        want = list(generate(model, P50K.encode(prompt), 5, GREEDY))
        assert out.choices[0].text == P50K.decode(want)
        assert out.usage is not None and out.usage.prompt_tokens == len(P50K.encode(prompt))
        fim = c.completions.create(
            model="run", prompt="def g(", suffix="):\n    pass\n", max_tokens=4, temperature=0
        )
        middle = list(
            generate(model, psm_prompt(P50K, "def g(", "):\n    pass\n"), 4, GREEDY, fim=True)
        )
        assert fim.choices[0].text == P50K.decode(middle)
    finally:
        stop(server)


def test_humaneval_infills_with_p50ks_prompt(made: SimpleNamespace) -> None:
    from pipeline.humaneval import problems as he

    args = ["benchmark=single-line", "problems=0:2", "n=1", "max_new_tokens=4", "timeout=2"]
    assert main(["humaneval", f"out_dir={made.run}", *args]) == 0
    recs = [json.loads(x) for x in (made.run / "humaneval/samples.jsonl").read_text().splitlines()]
    model, _, _ = load_for_inference(made.run)
    t0 = he.load("0:1", "single-line")[0]
    g = torch.Generator().manual_seed(1337)
    s = Sampling(temperature=0.2, top_k=0, top_p=0.95)
    want = generate_batch(
        model, psm_prompt(P50K, t0["prompt"], t0["suffix"]), 1, 4, s, generator=g, fim=True
    )
    assert recs[0]["completion"] == P50K.decode(want[0])


def test_the_export_tokenizes_as_tiktoken_and_gives_the_same_logits(
    made: SimpleNamespace,
) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    transformers = pytest.importorskip("transformers")
    assert main(["export", f"out_dir={made.run}"]) == 0
    hf = made.run / "hf"
    assert "`p50k`" in (hf / "README.md").read_text()
    assert json.loads((hf / "config.json").read_text())["vocab_size"] == P50K.n_ids == 50285
    fast = transformers.GPT2TokenizerFast.from_pretrained(hf)
    slow = transformers.GPT2Tokenizer.from_pretrained(hf)
    texts = [*made.texts, " " * 60 + "x", "a\n" + " " * 26 + "b  c   d\t\t  e"]
    for text in texts:
        want = P50K.encode(text)
        assert fast.encode(text) == want and slow.encode(text) == want, text[:60]
    for name, i in P50K.special_tokens.items():
        assert fast.convert_tokens_to_ids(name) == i and slow.convert_tokens_to_ids(name) == i
    ours, _, _ = load_for_inference(made.run)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(hf).eval()
    ids = torch.tensor([psm_prompt(P50K, "def f():\n            ", "\n    return 1\n")])
    with torch.no_grad():
        a, _ = ours(ids)
        b = theirs(ids).logits
    assert a is not None
    torch.testing.assert_close(a[..., : P50K.n_ids], b, atol=1e-5, rtol=1e-5)


def test_bits_per_byte_counts_p50ks_space_runs_as_their_bytes(made: SimpleNamespace) -> None:
    """An id's bytes are its tokenizer's: 50258 is three spaces in p50k, a sentinel in gpt2."""
    from model.scoring import token_bytes

    assert token_bytes(P50K)[50258] == 3 and token_bytes(P50K)[50280] == 25
    assert token_bytes(GPT2)[50258] == 0 and token_bytes(P50K)[P50K.eot] == 0
    assert main(["eval", f"out_dir={made.run}", "fim_windows=0"]) == 0
    (found,) = (made.run / "eval").glob("step-*.json")
    (row,) = [r for r in json.loads(found.read_text())["rows"] if r["language"] == "all"]
    ids = np.concatenate([np.asarray(open_shard(p)) for p in list_shards(made.tmp / "p50k", "val")])
    # every val token but the first is a target: their bytes, the val text's, less the first's
    text = P50K.decode(ids.tolist()).replace("<|endoftext|>", "")
    assert row["bytes"] == len(text.encode()) - len(P50K.token_bytes(int(ids[0])))
