"""The built-in sample: github-code schema, deterministic, bounded, rerun is a no-op."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.errors import ConfigError, StateError
from pipeline.__main__ import main
from pipeline.sample_data import stage as sample_data

GITHUB_CODE = pa.schema(
    [
        ("code", pa.string()),
        ("repo_name", pa.string()),
        ("path", pa.string()),
        ("language", pa.string()),
        ("license", pa.string()),
        ("size", pa.int64()),
    ]
)


def _cfg(**kw):
    return sample_data.SampleDataConfig(**kw)


def _read(out):
    parts = sorted(out.glob("part-*.parquet"))
    return parts, pa.concat_tables([pq.read_table(p) for p in parts])


@pytest.fixture
def tree(tmp_path):
    """A small source folder with one file of each interesting kind."""
    src = tmp_path / "proj"
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / "pkg" / "__pycache__").mkdir()
    (src / "pkg" / "__init__.py").write_text("x = 'héllo'\n", encoding="utf-8")
    (src / "pkg" / "sub" / "core.c").write_text("int main(void) { return 0; }\n")
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "Makefile").write_text("all:\n\techo ok\n")
    (src / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))  # not UTF-8
    (src / "nul.py").write_bytes(b"a = 1\x00\n")  # binary
    (src / "empty.py").write_text("")
    (src / "big.py").write_text("#" * 5000 + "\n")
    (src / "image.png").write_bytes(b"\x89PNG")
    (src / "pkg" / "__pycache__" / "x.py").write_text("cached = 1\n")
    return src


def test_folder_source_rows_paths_languages_and_skips(tree, tmp_path):
    out = tmp_path / "out"
    sample_data.run(_cfg(output=str(out), sources=[str(tree)], max_file_bytes=1000))
    _, t = _read(out)
    rows = t.to_pylist()
    assert [r["path"] for r in rows] == ["Makefile", "pkg/__init__.py", "pkg/sub/core.c", "run.sh"]
    assert [r["language"] for r in rows] == ["Makefile", "Python", "C", "Shell"]
    assert {r["repo_name"] for r in rows} == {"local/proj"}
    assert {r["license"] for r in rows} == {"unknown"}
    for r in rows:
        assert r["code"] == (tree / r["path"]).read_text(encoding="utf-8")
        assert r["size"] == len(r["code"].encode("utf-8"))
    stamp = json.loads((out / sample_data.STAMP).read_text())
    assert stamp["skipped"] == {"binary": 1, "empty": 1, "not_utf8": 1, "too_large": 1}
    assert stamp["rows"] == 4 and stamp["languages"]["Python"] == 1


def test_real_sources_schema_languages_budget_and_determinism(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    cfg = dict(max_bytes=3_000_000, file_bytes=1_000_000, row_groups_per_file=4)
    sample_data.run(_cfg(output=str(a), **cfg))
    sample_data.run(_cfg(output=str(b), **cfg))
    parts, t = _read(a)
    assert len(parts) >= 2
    for p in parts:
        assert pq.read_schema(p).remove_metadata() == GITHUB_CODE
    assert pq.ParquetFile(parts[0]).metadata.num_row_groups >= 2
    sizes = t.column("size").to_pylist()
    assert 2_500_000 < sum(sizes) <= 3_000_000
    assert len(set(t.column("language").to_pylist())) >= 3
    keys = list(zip(t.column("repo_name").to_pylist(), t.column("path").to_pylist(), strict=True))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert any(r.startswith("python/stdlib") for r, _ in keys)
    # Two runs over the same files give the same bytes.
    assert [p.name for p in sorted(b.glob("part-*.parquet"))] == [p.name for p in parts]
    for p in parts:
        assert p.read_bytes() == (b / p.name).read_bytes()


def test_larger_budget_is_a_superset(tree, tmp_path):
    small, large = tmp_path / "s", tmp_path / "l"
    sample_data.run(_cfg(output=str(small), sources=["stdlib"], max_bytes=300_000))
    sample_data.run(_cfg(output=str(large), sources=["stdlib"], max_bytes=900_000))
    few = set(_read(small)[1].column("path").to_pylist())
    many = set(_read(large)[1].column("path").to_pylist())
    assert few < many


def test_rerun_is_a_noop_and_a_changed_config_is_refused(tree, tmp_path, caplog):
    out = tmp_path / "out"
    args = ["sample-data", f"output={out}", f"sources=[{tree}]"]
    assert main(args) == 0
    part = out / "part-00000.parquet"
    before = part.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="pipeline.sample_data"):
        assert main(args) == 0
    assert "up to date" in caplog.text
    assert part.stat().st_mtime_ns == before
    with pytest.raises(StateError, match="max_bytes.*force=true"):
        sample_data.run(_cfg(output=str(out), sources=[str(tree)], max_bytes=50))
    (tree / "new.py").write_text("y = 2\n")
    with pytest.raises(StateError, match="source files"):
        sample_data.run(_cfg(output=str(out), sources=[str(tree)]))
    sample_data.run(_cfg(output=str(out), sources=[str(tree)], force=True))
    assert "new.py" in _read(out)[1].column("path").to_pylist()
    assert not list(out.glob("*.tmp"))


def test_foreign_parquet_and_bad_sources_are_user_errors(tree, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.parquet").write_bytes(b"x")
    with pytest.raises(StateError, match="mine.parquet"):
        sample_data.run(_cfg(output=str(out), sources=[str(tree)]))
    with pytest.raises(ConfigError, match="nowhere"):
        sample_data.run(_cfg(output=str(tmp_path / "o2"), sources=["nowhere"]))
    with pytest.raises(ConfigError, match="max_bytes"):
        _cfg(max_bytes=0)
