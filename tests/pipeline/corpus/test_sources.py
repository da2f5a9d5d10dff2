"""Every source the reading layer reads, end to end through the real tokenize and dedup stages.

Real files each time: parquet written with pyarrow in github-code's and The Stack's
schemas and in columns of one's own, JSON Lines plain, gzip and zstandard, and a folder
tree with a .git, a .gitignore, a virtualenv, a binary file, a file too large and a
symlink out of it. The same documents give the same shards from every source.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.__main__ import main
from pipeline.corpus import files, jsonl
from pipeline.corpus.batches import SCHEMAS, Batch, Reading
from tests.pipeline.tokenize.tokenize_fixtures import (
    RULES_OFF,
    corpus,
    expected,
    make_input,
    read_split,
    shard_bytes,
    tokenize,
    tokenize_subprocess,
)

STACK = SCHEMAS["the-stack"]
assert STACK is not None


def _manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())


def _accounted(out: Path) -> dict[str, Any]:
    c = _manifest(out)["counts"]
    assert c["read"] == c["tokenized"] + sum(c["skipped"].values())
    return c


def stack_parquet(path: Path, docs: list[dict[str, Any]]) -> Path:
    """docs in The Stack's columns (and one more it has), as its parquet files hold them."""
    table = pa.table(
        {
            "hexsha": [f"{i:040x}" for i in range(len(docs))],
            "max_stars_repo_path": [d["path"] for d in docs],
            "max_stars_repo_name": [d["repo_name"] for d in docs],
            "content": [d["code"] for d in docs],
            "lang": [d["language"] for d in docs],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=16)
    return path


def write_jsonl(path: Path, docs: list[dict[str, Any]], keys: dict[str, str] | None = None) -> Path:
    """docs as JSON Lines (keys renamed by `keys`), compressed by the file's suffix."""
    keys = keys or {}
    text = "".join(json.dumps({keys.get(k, k): v for k, v in d.items()}) + "\n" for d in docs)
    data = text.encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


STACK_KEYS = {"code": "content", "repo_name": "max_stars_repo_name", "language": "lang"}


def test_the_same_documents_give_the_same_shards_from_every_table_source(tmp_path: Path) -> None:
    docs = corpus(120)
    want = expected(docs)
    ref = tmp_path / "ref"
    assert tokenize(make_input(tmp_path / "gc", docs, files=2), ref) == 0
    assert np.array_equal(read_split(ref, "train"), want["train"])
    assert np.array_equal(read_split(ref, "val"), want["val"])
    half = len(docs) // 2
    inputs: dict[str, tuple[Path, dict[str, Any]]] = {
        "the-stack parquet": (
            stack_parquet(tmp_path / "st" / "a.parquet", docs[:half]).parent,
            {"schema": "the-stack"},
        ),
        ".jsonl, 2 workers": (
            write_jsonl(tmp_path / "j" / "a.jsonl", docs).parent,
            {"workers": 2, "batch_bytes": 5000},
        ),
        ".jsonl.gz in The Stack's keys": (
            write_jsonl(tmp_path / "g" / "a.jsonl.gz", docs, STACK_KEYS).parent,
            {"schema": "the-stack"},
        ),
        ".jsonl.zst, 2 workers": (
            write_jsonl(tmp_path / "z" / "a.jsonl.zst", docs).parent,
            {"workers": 2, "batch_bytes": 3000},
        ),
    }
    stack_parquet(tmp_path / "st" / "b.parquet", docs[half:])
    for what, (src, over) in inputs.items():
        out = tmp_path / what.replace(" ", "_")
        assert tokenize(src, out, **over) == 0, what
        assert shard_bytes(out) == shard_bytes(ref), what
        c = _accounted(out)
        assert c["read"] == c["tokenized"] == len(docs), what
        assert c["languages"] == _manifest(ref)["counts"]["languages"], what


def test_columns_of_ones_own_a_missing_repository_is_the_files_name(tmp_path: Path) -> None:
    docs = corpus(40)
    src = tmp_path / "in"
    src.mkdir()
    table = pa.table({"body": [d["code"] for d in docs], "file": [d["path"] for d in docs]})
    pq.write_table(table, src / "mine.parquet", row_group_size=8)
    over = {"text_column": "body", "path_column": "file", "languages": "[Python]"}
    assert tokenize(src, tmp_path / "out", **over) == 0
    # one repository, the file's name: every document in one split
    one_repo = [{**d, "repo_name": "mine.parquet"} for d in docs]
    want = expected(one_repo)
    assert np.array_equal(
        np.concatenate([read_split(tmp_path / "out", s) for s in ("train", "val")]),
        np.concatenate([want["train"], want["val"]]),
    )
    c = _accounted(tmp_path / "out")
    # no language column: the path's extension says Python, so the filter keeps them all
    assert c["tokenized"] == len(docs) and c["skipped"]["language"] == 0
    assert set(c["languages"]["train"]) | set(c["languages"]["val"]) == {"Python"}
    # the same as JSON Lines without a repository key
    lines = [{"body": d["code"], "file": d["path"]} for d in docs]
    write_jsonl(tmp_path / "j" / "mine.jsonl", lines)
    assert tokenize(tmp_path / "j", tmp_path / "j_out", **over) == 0
    assert _accounted(tmp_path / "j_out")["tokenized"] == len(docs)


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.zst"])
def test_jsonl_groups_start_at_any_row(tmp_path: Path, name: str) -> None:
    """Spans of lines as row groups: read from any (group, row), by a seek or by skipping."""
    docs = corpus(60, max_chars=400)
    lines = [json.dumps(d) for d in docs]
    lines[30:30] = ["", json.dumps({"repo_name": "r"})]  # a blank line, a record without text
    data = ("\n".join(lines) + "\n").encode()
    f = tmp_path / name
    f.write_bytes(zstandard.ZstdCompressor().compress(data) if name.endswith(".zst") else data)
    how = Reading()
    groups = jsonl.survey(f, how, group_bytes=2048)
    assert len(groups) > 5 and sum(r for r, _ in groups) == 62
    first = np.cumsum([0] + [r for r, _ in groups])
    texts: list[bytes | None] = [d["code"].encode() for d in docs]
    texts[30:30] = [None, None]  # both are null rows: counted, never lost
    for g in range(len(groups)):
        for row in {0, groups[g][0] - 1} - {-1}:
            got: list[bytes | None] = []
            for b in jsonl.read(f, 0, how, 1500, (g, row), None, int(first[g]), group_bytes=2048):
                assert isinstance(b, Batch) and b.file_row == first[b.row_group] + b.row
                got += [None if b.text.null[i] else b.text.value(i) for i in range(b.num_rows)]
            assert got == texts[first[g] + row :], (g, row)


def test_a_bad_jsonl_line_is_one_line_naming_the_file_and_the_line(tmp_path, capsys) -> None:
    docs = corpus(20)
    f = write_jsonl(tmp_path / "in" / "a.jsonl", docs)
    raw = f.read_bytes().split(b"\n")
    raw[6] = raw[6][:40]  # line 7: cut short
    f.write_bytes(b"\n".join(raw))
    assert tokenize(tmp_path / "in", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "a.jsonl" in err and "line 7" in err and "on_error=skip" in err, err
    assert tokenize(tmp_path / "in", tmp_path / "skip", on_error="skip") == 0
    skipped = _manifest(tmp_path / "skip")["files_skipped"]
    assert [s["file"] for s in skipped] == [str(f)] and "line 7" in skipped[0]["error"]
    # a first record without the text key: the keys it has, and the remedy
    write_jsonl(f, [{"content": "x = 1", "repo": "a"}])
    assert tokenize(tmp_path / "in", tmp_path / "o2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'code'" in err and "content, repo" in err, err
    assert "text_column=" in err
    # a truncated gzip file
    f.unlink()
    g = write_jsonl(tmp_path / "in" / "b.jsonl.gz", docs)
    g.write_bytes(g.read_bytes()[:-30])
    assert tokenize(tmp_path / "in", tmp_path / "o3") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "b.jsonl.gz" in err and "Traceback" not in err, err


def make_tree(root: Path, outside: Path) -> list[tuple[str, str, str]]:
    """A checkout of three repositories and the noise around them; returns the (relative
    path, repository, text) of each file the reading must keep, in sorted order."""
    docs = corpus(12, max_chars=800)
    kept: list[tuple[str, str, str]] = []

    def put(rel: str, text: str, repo: str | None) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        if repo is not None:
            kept.append((rel, repo, text))

    (root / "app" / ".git").mkdir(parents=True)
    (root / "app" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    put("app/.gitignore", "build/\n*.log\n!keep.log\n", "app")
    put("app/build/gen.py", docs[0]["code"], None)
    put("app/debug.log", "noise\n", None)
    put("app/keep.log", "kept: the .gitignore says so\n", "app")
    put("app/src/main.py", docs[1]["code"], "app")
    put("app/src/util.go", docs[2]["code"], "app")
    put("app/node_modules/dep/index.js", docs[3]["code"], None)
    put("app/src/__pycache__/main.cpython-311.pyc", "x", None)
    put("app/.venv/lib/site.py", docs[4]["code"], None)
    put("env/pyvenv.cfg", "home = /usr/bin\n", None)
    put("env/lib/os.py", docs[5]["code"], None)
    # a folder without .git: its first level is the repository, nested git top-levels win
    put("tools/a/one.py", docs[6]["code"], "tools")
    put("tools/b.sh", docs[7]["code"], "tools")
    (root / "tools" / "vendored" / ".git").mkdir(parents=True)
    put("tools/vendored/lib.c", docs[8]["code"], "tools/vendored")
    put("README.md", docs[9]["code"], root.name)
    (root / "tools" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + os.urandom(64))
    kept.append(("tools/logo.png", "tools", ""))  # read, then skipped: binary
    put("tools/huge.py", "x = 1\n" * 5000, "tools")  # over max_doc_bytes: too_large
    outside.write_text(docs[11]["code"])
    (root / "tools" / "out.py").symlink_to(outside)  # points out of the folder: left out
    (root / "tools" / "same.py").symlink_to(root / "tools" / "b.sh")  # inside: read
    kept.append(("tools/same.py", "tools", docs[7]["code"]))
    (root / "tools" / "loop").symlink_to(root / "tools", target_is_directory=True)
    return sorted(kept, key=lambda k: Path(k[0]).parts)


def test_nested_gitignores_decide_as_git_does(tmp_path: Path) -> None:
    """A deeper .gitignore's rules win over the ones above it, and a folder's own
    patterns are relative to it: the files walk() keeps are exactly the ones a real git
    repository does not ignore (`git ls-files --others --exclude-standard`)."""
    import subprocess

    root = tmp_path / "repo"
    ignores = {
        ".gitignore": "*.log\n*.tmp\nbuild/\n/top.txt\n",
        "sub/.gitignore": "!keep.log\n*.txt\n!/build/\n",
        "sub/deeper/.gitignore": "keep.log\n!*.tmp\n",
    }
    names = ["top.txt", "a.log", "a.tmp", "main.py", "build/gen.py", "sub/top.txt"]
    names += ["sub/keep.log", "sub/other.log", "sub/notes.txt", "sub/x.tmp", "sub/build/b.py"]
    names += ["sub/deeper/keep.log", "sub/deeper/y.tmp", "sub/deeper/z.txt", "sub/deeper/m.py"]
    for rel, text in [*ignores.items(), *((n, "x = 1\n") for n in names)]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    git = subprocess.run(
        ["git", "-C", str(root), "ls-files", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    )
    kept = {p.relative_to(root).as_posix() for p in files.walk(root).inputs}
    assert kept == set(git.stdout.split())
    # the cases that need the deeper file to win: negated back in, then out again below
    assert {"sub/keep.log", "sub/deeper/y.tmp"} <= kept and "sub/deeper/keep.log" not in kept


FOLDER = {"schema": "files", "max_doc_bytes": 20000}


def test_a_folder_of_source_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "src"
    kept = make_tree(root, tmp_path / "elsewhere.py")
    out = tmp_path / "out"
    assert tokenize(root, out, **FOLDER) == 0
    m = _manifest(out)
    assert [e["path"] for e in m["inputs"]] == [str(root / rel) for rel, _, _ in kept]
    c = _accounted(out)
    assert c["read"] == len(kept)
    assert c["skipped"]["binary"] == 1 and c["skipped"]["too_large"] == 1
    assert c["tokenized"] == len(kept) - 2
    assert m["ignored"] == {
        "folders": 6,  # 2 .git, node_modules, __pycache__, .venv, a virtualenv (pyvenv.cfg)
        "gitignore": 1,  # debug.log (keep.log is negated back in)
        "gitignore_folders": 1,  # build/
        "symlink_folders": 1,
        "symlink_outside": 1,
    }
    docs = [
        {"code": text, "repo_name": repo}
        for rel, repo, text in kept
        if text and not rel.endswith("huge.py")
    ]
    want = expected(docs)
    assert np.array_equal(read_split(out, "train"), want["train"])
    assert np.array_equal(read_split(out, "val"), want["val"])
    # the repository: the git top-level, else the first folder level (the split hashes it)
    assert files.repository_of(root, root / "tools/vendored/lib.c") == ("tools/vendored", "lib.c")
    assert files.repository_of(root, root / "app/src/main.py") == ("app", "src/main.py")
    assert files.repository_of(root, root / "tools/a/one.py") == ("tools", "a/one.py")
    assert files.repository_of(root, root / "README.md") == ("src", "README.md")
    (root / ".git").mkdir()  # the whole folder one checkout: its name, for every file
    assert files.repository_of(root, root / "tools/a/one.py") == ("src", "tools/a/one.py")
    assert files.repository_of(root, root / "app/src/main.py") == ("app", "src/main.py")
    (root / ".git").rmdir()
    langs = set(c["languages"]["train"]) | set(c["languages"]["val"])
    assert {"Python", "GO", "Shell", "C", "Markdown"} <= langs
    # any worker count, the same bytes; a rerun is up to date
    assert tokenize(root, tmp_path / "two", workers=2, **FOLDER) == 0
    assert shard_bytes(tmp_path / "two") == shard_bytes(out)
    # and any cut of the files into row groups (the main process decides it)
    monkeypatch.setattr(files, "GROUP_FILES", 3)
    assert tokenize(root, tmp_path / "threes", workers=2, batch_bytes=500, **FOLDER) == 0
    assert shard_bytes(tmp_path / "threes") == shard_bytes(out)
    assert _manifest(tmp_path / "threes")["counts"] == c
    monkeypatch.undo()
    assert tokenize(root, out, **FOLDER) == 0 and _manifest(out)["complete"]
    # an edit is seen: refused without force
    (root / "app" / "src" / "main.py").write_text("print('changed')\n")
    assert tokenize(root, out, **FOLDER) == 2


def test_a_folder_that_is_not_one_is_one_line(tmp_path: Path, capsys) -> None:
    f = tmp_path / "x.py"
    f.write_text("x = 1\n")
    assert tokenize(f, tmp_path / "out", schema="files") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a folder" in err and "schema=" in err, err
    # a column key means nothing for whole files: refused, not silently ignored
    assert tokenize(tmp_path, tmp_path / "out", schema="files", text_column="content") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "text_column" in err and "schema=files" in err, err


def test_dedup_reads_every_source_as_tokenize_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The near-dedup stage on JSON Lines and on a folder: copies found, and tokenize
    skips exactly those (its check of the decision's inputs and rules passes)."""
    docs = corpus(30, max_chars=2000)
    copies = [
        {**d, "code": d["code"] + "\n# a fork\n", "repo_name": f"fork/{i}"}
        for i, d in enumerate(docs[:5])
    ]
    j = write_jsonl(tmp_path / "j" / "a.jsonl.zst", docs + copies).parent
    root = tmp_path / "tree"
    for i, d in enumerate(docs + copies):
        p = root / d["repo_name"].replace("/", "_") / f"f{i:03d}.py"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(d["code"])
    monkeypatch.setattr(files, "GROUP_FILES", 4)  # a folder's row ids span several groups
    for src, over in ((j, {}), (root, {"schema": "files"})):
        near = tmp_path / f"near-{src.name}"
        rules = {k: v for k, v in RULES_OFF.items() if k not in ("dedup", "near_dedup")}
        cli = [f"{k}={v}" for k, v in {**rules, **over}.items()]
        base = ["dedup", f"input={src}", f"output={near}", "workers=2", "max_rss_gb=64"]
        assert main([*base, "min_available_gb=0", *cli]) == 0
        state = json.loads((near / "dedup.json").read_text())
        assert state["counts"]["dropped"] >= len(copies), src
        out = tmp_path / f"out-{src.name}"
        assert tokenize(src, out, near_dedup=near, **over) == 0
        assert _accounted(out)["skipped"]["near_duplicate"] == state["counts"]["dropped"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jsonl.zst", "files"])
def test_sigkill_then_rerun_gives_the_same_bytes(tmp_path: Path, kind: str) -> None:
    from tests.pipeline.tokenize.test_tokenize_resume import _kill_when, _n_shards

    docs = corpus(300, max_chars=2000)
    if kind == "files":  # more files than a row group holds (files.GROUP_FILES)
        docs = corpus(1100, max_chars=600)
        src = tmp_path / "tree"
        for i, d in enumerate(docs):
            p = src / f"repo{i % 9}" / f"{i:04d}.py"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(d["code"])
        over: dict[str, Any] = {"schema": "files"}
    else:
        src = write_jsonl(tmp_path / "in" / "a.jsonl.zst", docs).parent
        over = {}
    opts = {**over, "shard_tokens": 2000, "workers": 2, "batch_bytes": 15000, "dedup": "exact"}
    ref = tmp_path / "ref"
    assert tokenize(src, ref, **{**opts, "workers": 1}) == 0
    out = tmp_path / "out"
    rc = _kill_when(tokenize_subprocess(src, out, **opts), out, shards_at_least=3)
    assert rc == -signal.SIGKILL and 3 <= _n_shards(out) < _n_shards(ref)
    _kill_when(tokenize_subprocess(src, out, **opts), out, after_s=0.8)  # anywhere
    proc = tokenize_subprocess(src, out, **opts)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert shard_bytes(out) == shard_bytes(ref)
    a, b = _manifest(out), _manifest(ref)
    assert a["complete"] and a["counts"] == b["counts"] and a["shards"] == b["shards"]
