"""Every bad input the issue lists: a counted skip, or one line naming the file and the remedy."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model import tokenizer
from tests.pipeline.tokenize.tokenize_fixtures import (
    SCHEMA,
    corpus,
    expected,
    make_input,
    read_split,
    tokenize,
    write_parquet,
)


def _counts(out):
    return json.loads((out / "manifest.json").read_text())["counts"]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("codegpt tokenize: error:")
    for n in needles:
        assert n in err, err
    return err


def test_null_empty_and_too_large_are_counted_skips(tmp_path):
    docs = corpus(40)
    docs[3]["code"] = None
    docs[7]["code"] = ""
    docs[11]["code"] = "x = 1\n" * 2000  # 12,000 bytes
    src = make_input(tmp_path / "in", docs, files=1)
    assert tokenize(src, tmp_path / "out", max_doc_bytes=10_000) == 0
    c = _counts(tmp_path / "out")
    assert c["skipped"]["null"] == 1 and c["skipped"]["empty"] == 1
    assert c["skipped"]["too_large"] == 1
    assert c["read"] == 40 and c["tokenized"] == 37
    kept = [d for i, d in enumerate(docs) if i not in (3, 7, 11)]
    want = expected(kept)
    assert np.array_equal(read_split(tmp_path / "out", "train"), want["train"])


def _invalid_utf8_table(texts: list[bytes]) -> pa.Table:
    """A *string* column holding bytes that are not UTF-8 (pyarrow builds it unchecked)."""
    raw = pa.array(texts, type=pa.binary())
    code = raw.view(pa.string())
    n = len(texts)
    return pa.table(
        {
            "code": code,
            "repo_name": pa.array([f"r/{i}" for i in range(n)]),
            "path": pa.array(["a.py"] * n),
            "language": pa.array(["Python"] * n),
        }
    )


def test_invalid_utf8_and_lone_surrogates_in_a_string_column(tmp_path):
    texts = [b"ok = 1\n", b"bad = '\xff\xfe'\n", b"sur = '\xed\xa0\x80'\n", b"fine()\n"]
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(_invalid_utf8_table(texts), src / "a.parquet")
    with pytest.raises(UnicodeDecodeError):  # what a naive reader hits
        pq.read_table(src / "a.parquet").column("code").to_pylist()
    assert tokenize(src, tmp_path / "out", val_fraction=0.0) == 0
    c = _counts(tmp_path / "out")
    assert c["replaced_utf8"] == 2 and c["tokenized"] == 4
    got = tokenizer.get().decode(read_split(tmp_path / "out", "train").tolist())
    want = "".join(t.decode("utf-8", errors="replace") + tokenizer.EOT_TEXT for t in texts)
    assert got == want and "\ufffd" in got


def test_binary_text_column(tmp_path):
    docs = corpus(30)
    schema = SCHEMA.set(0, pa.field("code", pa.binary()))
    for d in docs:
        d["code"] = d["code"].encode()
    src = tmp_path / "in"
    src.mkdir()
    write_parquet(src / "a.parquet", docs, schema=schema)
    assert tokenize(src, tmp_path / "out") == 0
    for d in docs:
        d["code"] = d["code"].decode()
    want = expected(docs)
    assert np.array_equal(read_split(tmp_path / "out", "train"), want["train"])
    assert np.array_equal(read_split(tmp_path / "out", "val"), want["val"])


def test_missing_text_column_names_the_columns(tmp_path, capsys):
    src = make_input(tmp_path / "in", corpus(10), files=1)
    assert tokenize(src, tmp_path / "out", text_column="content") == 2
    _one_line_error(capsys, "part-0.parquet", "'content'", "code, repo_name", "text_column=")
    assert not (tmp_path / "out").exists()  # checked before any work


def test_text_column_of_the_wrong_type(tmp_path, capsys):
    src = make_input(tmp_path / "in", corpus(10), files=1)
    assert tokenize(src, tmp_path / "out", text_column="path", languages="[Python]") == 0
    assert tokenize(src, tmp_path / "o2", text_column="missing") == 2
    capsys.readouterr()
    table = pa.table({"code": [1, 2], "repo_name": ["a", "b"]})
    pq.write_table(table, src / "part-0.parquet")
    assert tokenize(src, tmp_path / "o3") == 2
    _one_line_error(capsys, "part-0.parquet", "int64", "text_column=")


def test_language_filter(tmp_path, capsys):
    docs = corpus(50)
    src = make_input(tmp_path / "in", docs, files=2)
    assert tokenize(src, tmp_path / "out", languages="[Python]") == 0
    c = _counts(tmp_path / "out")
    n_md = sum(d["language"] != "Python" for d in docs)
    assert c["skipped"]["language"] == n_md > 0 and c["tokenized"] == 50 - n_md
    want = expected([d for d in docs if d["language"] == "Python"])
    assert np.array_equal(read_split(tmp_path / "out", "train"), want["train"])
    # no language column: the path's extension decides (every corpus path ends in .py)
    schema = pa.schema([f for f in SCHEMA if f.name != "language"])
    write_parquet(src / "part-0.parquet", docs, schema=schema)
    assert tokenize(src, tmp_path / "o2", languages="[Python]") == 0
    assert _counts(tmp_path / "o2")["skipped"]["language"] < n_md
    # neither a language nor a path column: nothing to filter on
    schema = pa.schema([f for f in SCHEMA if f.name not in ("language", "path")])
    write_parquet(src / "part-0.parquet", docs, schema=schema)
    assert tokenize(src, tmp_path / "o3", languages="[Python]") == 2
    _one_line_error(capsys, "part-0.parquet", "'language'", "'path'", "languages=[]")


def test_empty_folder_and_no_parquet(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert tokenize(tmp_path / "in", tmp_path / "out") == 2
    _one_line_error(capsys, "no *.parquet or *.jsonl", "it is empty", "sample-data")
    (tmp_path / "in" / "notes.txt").write_text("hi")
    assert tokenize(tmp_path / "in", tmp_path / "out") == 2
    _one_line_error(capsys, "notes.txt")
    assert tokenize(tmp_path / "nowhere", tmp_path / "out") == 2
    _one_line_error(capsys, "nowhere", "input=")


def test_truncated_file_fails_or_is_skipped(tmp_path, capsys):
    docs = corpus(60)
    src = make_input(tmp_path / "in", docs, files=3)
    bad = src / "part-1.parquet"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    assert tokenize(src, tmp_path / "out") == 2
    _one_line_error(capsys, "part-1.parquet", "on_error=skip")
    assert tokenize(src, tmp_path / "out", on_error="skip") == 0
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["file"] for s in m["files_skipped"]] == [str(bad)]
    assert m["counts"]["read"] == 40
    want = expected(docs[:20] + docs[40:])
    assert np.array_equal(read_split(tmp_path / "out", "train"), want["train"])


def _corrupt_row_group(path, group):
    """Overwrite the page header of `group`'s first column chunk with garbage."""
    md = pq.ParquetFile(path).metadata
    at = md.row_group(group).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[at : at + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def test_corrupt_page_in_a_later_row_group(tmp_path, capsys):
    docs = corpus(90)
    src = make_input(tmp_path / "in", docs, files=1, row_group_size=30)
    f = src / "part-0.parquet"
    _corrupt_row_group(f, 2)
    pf = pq.ParquetFile(f)
    pf.read_row_group(0)  # the first row groups still read
    with pytest.raises((OSError, ValueError)):
        pf.read_row_group(2)
    assert tokenize(src, tmp_path / "out") == 2
    _one_line_error(capsys, "part-0.parquet", "on_error=skip")
    assert tokenize(src, tmp_path / "o2", on_error="skip") == 0
    m = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    (skip,) = m["files_skipped"]
    assert skip["row_group"] == 2 and skip["rows_not_read"] == 30
    assert m["counts"]["read"] == 60
    want = expected(docs[:60])
    assert np.array_equal(read_split(tmp_path / "o2", "train"), want["train"])
    assert np.array_equal(read_split(tmp_path / "o2", "val"), want["val"])


def test_tokenizer_panic_is_counted_and_the_run_goes_on(tmp_path):
    docs = corpus(20)
    docs[5]["code"] = "x" + " " * 1_000_000 + "y"  # tiktoken's regex overflows its stack
    src = make_input(tmp_path / "in", docs, files=1)
    assert tokenize(src, tmp_path / "out", max_doc_bytes=2_000_000) == 0
    c = _counts(tmp_path / "out")
    assert c["skipped"]["tokenizer_error"] == 1 and c["tokenized"] == 19
    want = expected(docs[:5] + docs[6:])
    assert np.array_equal(read_split(tmp_path / "out", "train"), want["train"])


def test_the_panic_is_a_base_exception_and_the_guard_catches_it():
    """Found by trying: encode_ordinary panics in Rust with an exception that is not an
    Exception (pyo3's PanicException derives from BaseException), which `except
    Exception` would let through and kill the worker; encode_doc catches it."""
    from pipeline.tokenize.worker import encode_doc

    doc = "def f():\n" + " " * 1_000_000 + "return 1"
    with pytest.raises(BaseException) as raised:
        tokenizer.get().encoding.encode_ordinary(doc)
    assert type(raised.value).__name__ == "PanicException"
    assert not isinstance(raised.value, Exception)
    assert encode_doc(doc, tokenizer.get()) is None
    assert encode_doc("x = 1\n", tokenizer.get()).tolist() == [
        *tokenizer.get().encode("x = 1\n"),
        tokenizer.EOT,
    ]
