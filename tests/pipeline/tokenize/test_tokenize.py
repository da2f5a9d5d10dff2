"""The tokenize stage end to end on real parquet files: round trip, determinism, reruns."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from model import tokenizer
from model.manifest import read_manifest
from pipeline.tokenize.worker import split_of, split_threshold
from tests.conftest import REPO
from tests.pipeline.tokenize.tokenize_fixtures import (
    corpus,
    expected,
    make_input,
    read_split,
    shard_bytes,
    tokenize,
)


@pytest.fixture(scope="module")
def docs():
    return corpus(300)


@pytest.fixture
def src(tmp_path, docs):
    return make_input(tmp_path / "in", docs)


def test_round_trip(src, tmp_path, docs, capsys):
    out = tmp_path / "out"
    assert tokenize(src, out) == 0
    want = expected(docs)
    assert len(want["val"]) > 0 and len(want["train"]) > 0  # both splits exercised
    for split in ("train", "val"):
        got = read_split(out, split)
        assert np.array_equal(got, want[split])  # ids equal tiktoken's, in order, EOT after each
        eot = np.flatnonzero(got == tokenizer.EOT)
        texts = [tokenizer.get().decode(d.tolist()) for d in np.split(got, eot + 1)[:-1]]
        th = split_threshold(0.2)
        wanted = [
            d["code"] + tokenizer.EOT_TEXT
            for d in docs
            if split_of(d["repo_name"].encode(), th) == (split == "val")
        ]
        assert texts == wanted
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] is True
    for split in ("train", "val"):
        sizes = [e["tokens"] for e in m["shards"][split]]
        assert all(s == 5000 for s in sizes[:-1]) and 0 < sizes[-1] <= 5000
        for e in m["shards"][split]:
            arr = np.load(out / e["name"])
            assert arr.dtype == np.uint16 and arr.shape == (e["tokens"],)
    c = m["counts"]
    assert c["read"] == c["tokenized"] + sum(c["skipped"].values()) == len(docs)
    assert c["tokens"] == {"train": len(want["train"]), "val": len(want["val"])}
    assert [i["path"] for i in m["inputs"]] == sorted(str(p) for p in src.glob("*.parquet"))
    assert m["tokenizer"]["vocab_sha256"] == tokenizer.get().sha256
    assert m["tokenizer"]["special_tokens"] == tokenizer.get().special_tokens
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.partial"))
    line = capsys.readouterr().out
    assert f"{len(docs):,} documents read = {len(docs):,} tokenized + 0 skipped" in line


def test_a_document_that_spells_the_sentinels_is_plain_text(tmp_path):
    """A file that writes `<fim_prefix>` or `<|endoftext|>` is ordinary text in the shards."""
    code = "S = ['<fim_prefix>', '<fim_suffix>', '<fim_middle>', '<fim_pad>', '<|endoftext|>']\n"
    docs = [{**d, "code": code + d["code"]} for d in corpus(40)]
    out = tmp_path / "out"
    assert tokenize(make_input(tmp_path / "in", docs), out) == 0
    stream = np.concatenate([read_split(out, s) for s in ("train", "val")])
    assert stream.max() == tokenizer.EOT and (stream == tokenizer.EOT).sum() == len(docs)
    assert tokenizer.get().decode(stream.tolist()).count(code) == len(docs)


def test_a_manifest_from_before_the_special_tokens_record_resumes(tmp_path, docs, capsys):
    """An output written before the manifest named its special tokens is not 'changed'."""
    src, out = make_input(tmp_path / "in", docs), tmp_path / "out"
    assert tokenize(src, out) == 0
    m = json.loads((out / "manifest.json").read_text())
    del m["tokenizer"]["special_tokens"], m["tokenizer"]["n_vocab"]  # older still
    (out / "manifest.json").write_text(json.dumps(m))
    assert tokenize(src, out) == 0  # up to date, not refused
    assert tokenize(src, out, tokenizer="p50k") == 2  # another tokenizer: force=true
    assert "tokenizer gpt2 -> p50k" in capsys.readouterr().err
    m["tokenizer"]["special_tokens"] = {"<|endoftext|>": 50256, "<fim_prefix>": 50300}
    (out / "manifest.json").write_text(json.dumps(m))
    assert tokenize(src, out) == 2  # another set is a change: force=true to start over


def test_no_repository_in_both_splits(tmp_path, docs):
    """Read back from the shards: each repository's documents all sit in one split."""
    tagged = [{**d, "code": f"# repo {d['repo_name']}\n{d['code']}"} for d in docs]
    out = tmp_path / "out"
    assert tokenize(make_input(tmp_path / "in", tagged), out) == 0
    seen: dict[str, set[str]] = {}
    for split in ("train", "val"):
        got = read_split(out, split)
        for ids in np.split(got, np.flatnonzero(got == tokenizer.EOT) + 1)[:-1]:
            repo = (
                tokenizer.get().decode(ids[:-1].tolist()).split("\n", 1)[0].removeprefix("# repo ")
            )
            seen.setdefault(repo, set()).add(split)
    assert set(seen) == {d["repo_name"] for d in docs}  # every repository came back
    assert all(len(splits) == 1 for splits in seen.values()), seen
    assert {s for splits in seen.values() for s in splits} == {"train", "val"}


def test_the_split_is_the_same_in_a_fresh_process(docs):
    """blake2b, not hash(): another interpreter with another hash seed agrees on every repo."""
    repos = sorted({d["repo_name"] for d in docs})
    code = (
        "import sys\n"
        "from pipeline.tokenize.worker import split_of, split_threshold\n"
        "th = split_threshold(0.2)\n"
        "print(''.join(str(split_of(r.encode(), th)) for r in sys.argv[1:]))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    done = subprocess.run(
        [sys.executable, "-c", code, *repos], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    here = "".join(str(split_of(r.encode(), split_threshold(0.2))) for r in repos)
    assert done.stdout.strip() == here and set(here) == {"0", "1"}


@pytest.mark.slow
def test_one_and_two_workers_give_identical_bytes(src, tmp_path):
    assert tokenize(src, tmp_path / "w1", workers=1, batch_bytes=7000) == 0
    assert tokenize(src, tmp_path / "w2", workers=2, batch_bytes=30000) == 0
    one, two = shard_bytes(tmp_path / "w1"), shard_bytes(tmp_path / "w2")
    assert len(one) > 10 and one == two
    c1 = json.loads((tmp_path / "w1" / "manifest.json").read_text())["counts"]
    c2 = json.loads((tmp_path / "w2" / "manifest.json").read_text())["counts"]
    assert c1 == c2


def test_rerun_is_a_no_op(src, tmp_path, capsys):
    out = tmp_path / "out"
    assert tokenize(src, out) == 0
    # .lock names whoever holds the folder now: the one file a no-op rerun writes
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".lock"}
    capsys.readouterr()
    assert tokenize(src, out, workers=2, max_rss_gb=8) == 0  # not output-shaping keys
    assert "up to date" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".lock"}
    assert after == before


def test_changed_config_or_inputs_refused_then_force(src, tmp_path, capsys):
    out = tmp_path / "out"
    assert tokenize(src, out) == 0
    capsys.readouterr()
    assert tokenize(src, out, shard_tokens=6000) == 2
    err = capsys.readouterr().err
    assert "shard_tokens 5000 -> 6000" in err and "force=true" in err
    assert len(err.strip().splitlines()) == 1
    f = src / "part-1.parquet"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    (src / "part-3.parquet").write_bytes((src / "part-0.parquet").read_bytes())
    assert tokenize(src, out) == 2
    err = capsys.readouterr().err
    assert "part-1.parquet mtime_ns" in err and "part-3.parquet added" in err
    assert tokenize(src, out, shard_tokens=6000, force=True) == 0
    m = read_manifest(out)
    assert m is not None and m.settings["shard_tokens"] == 6000
    assert all(e.tokens <= 6000 for e in m.shards["train"])
    assert len(list(out.glob("train_*.npy"))) == len(m.shards["train"])


def test_foreign_shards_refused(src, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / "train_000000.npy", np.zeros(3, dtype=np.uint16))
    assert tokenize(src, out) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_config_validation(tmp_path, capsys):
    for bad in ("workers=0", "workers=many", "val_fraction=1.5", "on_error=ignore"):
        assert tokenize(tmp_path, tmp_path / "o", **dict([bad.split("=")])) == 2
        assert bad.split("=")[0] in capsys.readouterr().err


def test_progress_lines_on_stderr(src, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.tokenize.progress")
    assert tokenize(src, tmp_path / "out", progress_seconds=0) == 0
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert lines, "no progress line"
    assert all(k in lines[-1] for k in ("docs", "tokens,", "MB/s", "M tokens/s", "%"))


def test_a_listed_shard_that_is_gone_is_named(src, tmp_path, capsys):
    out = tmp_path / "out"
    assert tokenize(src, out) == 0
    (out / "train_000001.npy").unlink()
    capsys.readouterr()
    assert tokenize(src, out) == 2
    err = capsys.readouterr().err
    assert f"train_000001.npy is listed in {out / 'manifest.json'} but missing" in err
    assert "force=true" in err
    assert tokenize(src, out, force=True) == 0
    assert (out / "train_000001.npy").is_file()


def test_a_manifest_stopped_inside_a_document_by_older_code_is_refused(src, tmp_path, capsys):
    """Resume is at batch boundaries now; an older manifest's token offset cannot be honoured."""
    out = tmp_path / "out"
    assert tokenize(src, out) == 0
    m = json.loads((out / "manifest.json").read_text())
    m["complete"] = False
    m["position"].update(file_index=1, row_group=0, row=3, token_offset=17)
    (out / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert tokenize(src, out) == 2
    err = capsys.readouterr().err.strip()
    assert "older codegpt that stopped inside a document" in err and "force=true" in err
    assert len(err.splitlines()) == 1
