"""The streaming parquet reader and the manifest module, on their own."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.errors import InputError
from model.manifest import (
    MANIFEST,
    Counts,
    Manifest,
    Resume,
    ShardEntry,
    read_manifest,
    write_manifest,
)
from pipeline.corpus import inputs as inputslib
from pipeline.corpus import source
from pipeline.corpus.batches import Batch, FileError, Reading
from pipeline.tokenize import manifest
from tests.pipeline.tokenize.tokenize_fixtures import corpus, write_parquet

HOW = Reading()  # github-code's columns


def _docs_of(items):
    out = []
    for it in items:
        assert isinstance(it, Batch)
        out += [it.text.value(i).decode() for i in range(it.num_rows)]
    return out


def test_batches_are_bounded_by_bytes_not_rows(tmp_path):
    docs = corpus(200, max_chars=4000)
    f = write_parquet(tmp_path / "a.parquet", docs, row_group_size=200)
    items = list(source.read_file(f, 0, HOW, batch_bytes=40_000))
    sizes = [len(b.text.data) for b in items]
    assert len(items) >= 15  # ~800 KB in ~40 KB batches, not one 200-row batch
    assert max(sizes) < 3 * 40_000
    assert _docs_of(items) == [d["code"] for d in docs]
    big = list(source.read_file(f, 0, HOW, batch_bytes=10**9))
    assert len(big) == 1


def test_a_batch_pickles_only_its_own_bytes(tmp_path):
    docs = corpus(100, max_chars=4000)
    f = write_parquet(tmp_path / "a.parquet", docs, row_group_size=100)
    items = list(source.read_file(f, 0, HOW, batch_bytes=20_000))
    b = items[len(items) // 2]
    assert len(pickle.dumps(b)) < 2 * len(b.text.data) + 10_000


def test_start_position_resumes_at_the_row(tmp_path):
    docs = corpus(120)
    files = [
        write_parquet(tmp_path / f"{k}.parquet", docs[k * 60 : (k + 1) * 60], 25) for k in (0, 1)
    ]
    items = list(source.read_file(files[1], 1, HOW, 30_000, start=(1, 7)))
    assert items[0].file_index == 1 and items[0].row_group == 1 and items[0].row == 7
    assert items[0].file_row == 25 + 7
    assert _docs_of(items) == [d["code"] for d in docs[60 + 25 + 7 :]]
    one = list(source.read_file(files[1], 1, HOW, 30_000, start=(1, 7), groups=1))
    assert _docs_of(one) == [d["code"] for d in docs[60 + 25 + 7 : 60 + 50]]


def test_columns_are_read_in_our_order_and_languages_filter(tmp_path):
    docs = corpus(30)
    schema = pa.schema(
        [("language", pa.string()), ("repo_name", pa.string()), ("code", pa.string())]
    )
    f = write_parquet(tmp_path / "a.parquet", docs, schema=schema)
    (b,) = list(source.read_file(f, 0, Reading(languages=("Python",)), 10**9))
    assert b.text.value(0).decode() == docs[0]["code"]
    assert b.repo.value(0).decode() == docs[0]["repo_name"]
    assert b.keep is not None and b.keep.tolist() == [d["language"] == "Python" for d in docs]


def test_unreadable_file_becomes_a_file_error_item(tmp_path):
    f = write_parquet(tmp_path / "a.parquet", corpus(10))
    f.write_bytes(f.read_bytes()[:100])
    (item,) = list(source.read_file(f, 3, HOW, 10**6))
    assert isinstance(item, FileError) and item.file_index == 3 and item.path == str(f)


def test_nulls_survive_as_nulls(tmp_path):
    table = pa.table({"code": ["a", None, ""], "repo_name": ["r", "r", None]})
    pq.write_table(table, tmp_path / "a.parquet")
    (b,) = list(source.read_file(tmp_path / "a.parquet", 0, HOW, 10**6))
    assert b.text.null.tolist() == [False, True, False]
    assert np.diff(b.text.offsets).tolist() == [1, 0, 0]


def test_list_inputs_sorted_and_glob(tmp_path):
    for name in ("b.parquet", "a.parquet", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in source.list_inputs(str(tmp_path), HOW).files] == [
        "a.parquet",
        "b.parquet",
    ]
    assert [p.name for p in source.list_inputs(str(tmp_path / "b*"), HOW).files] == ["b.parquet"]
    with pytest.raises(InputError, match="matches no files"):
        source.list_inputs(str(tmp_path / "z*.parquet"), HOW)


def test_manifest_write_read_and_differences(tmp_path):
    """The record reads back equal field by field, in the documented JSON layout."""
    f = tmp_path / "x.parquet"
    f.write_bytes(b"1234")
    inputs = inputslib.input_entries([f])
    m = Manifest(
        complete=False,
        tokenizer={"name": "gpt2"},
        shards={"train": [ShardEntry("train_000000.npy", 7)], "val": [ShardEntry("v", 3, "d")]},
        counts=Counts(read=5, tokenized=4, skipped={"null": 1}, tokens={"train": 7, "val": 3}),
        settings={"a": 1},
        config={"workers": 2},
        inputs=inputs,
        ignored={"gitignored": 2},
        files_skipped=[{"file": "y", "error": "bad"}],
        resume=Resume(1, 2, 3, "x", {"train": 5, "val": 6}, partial_docs=7, dedup_digests=8),
    )
    write_manifest(tmp_path, m)
    assert read_manifest(tmp_path) == m and not list(tmp_path.glob("*.tmp"))
    data = json.loads((tmp_path / MANIFEST).read_text())
    assert list(data) == [
        *("version", "complete", "settings", "config", "tokenizer", "inputs", "ignored"),
        *("shards", "partial", "partial_docs", "dedup_digests", "position", "counts"),
        "files_skipped",
    ]
    assert data["shards"]["train"] == [{"name": "train_000000.npy", "tokens": 7}]  # no docs key
    f.write_bytes(b"12345")
    g = tmp_path / "y.parquet"
    g.write_bytes(b"")
    changed = inputslib.differences(
        inputslib.Made(m.inputs, m.settings),
        inputslib.Made(inputslib.input_entries([f, g]), {"a": 2}),
    )
    assert changed == [f"input {g} added", f"input {f} size 4 -> 5", "a 1 -> 2"]
    (tmp_path / MANIFEST).write_text(json.dumps({**data, "counts": {"tokns": {}}}))
    with pytest.raises(InputError, match="malformed field.*tokns.*force=true"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="force=true"):
        read_manifest(tmp_path)


def test_partial_file_survives_a_killed_append(tmp_path):
    buf = np.arange(100, dtype=np.uint16)
    manifest.append_partial(tmp_path, "val", 2, buf[:40], 0)
    p = manifest.partial_path(tmp_path, "val", 2)
    assert p.name == "val_000002.partial"
    with open(p, "ab") as fh:  # a killed append: bytes past the recorded 40 tokens
        fh.write(b"\x01\x02\x03")
    assert np.array_equal(manifest.load_partial(tmp_path, "val", 2, 40), buf[:40])
    manifest.append_partial(tmp_path, "val", 2, buf[:70], 40)
    assert np.array_equal(manifest.load_partial(tmp_path, "val", 2, 70), buf[:70])
    with pytest.raises(InputError, match="expects 90"):
        manifest.load_partial(tmp_path, "val", 2, 90)
