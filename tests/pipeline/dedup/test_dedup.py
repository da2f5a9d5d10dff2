"""The near-dedup stage: MinHash and LSH on their own, then the stage on real parquet files,
its decision in tokenize, worker-count independence, reruns, and SIGKILL then rerun.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.errors import InputError
from pipeline.__main__ import main
from pipeline.corpus import decision
from pipeline.corpus.batches import Position
from pipeline.dedup.buckets import EDGE, components
from pipeline.dedup.minhash import MinHasher, Params, jaccard, lsh_bands
from tests.conftest import REPO, tmpfs_or_skip
from tests.pipeline.tokenize.tokenize_fixtures import RULES_OFF, corpus, make_input, tokenize

# tokenize with the dedup stage's (default) rules, and exact dedup off to see near-dups alone
SAME_RULES: dict[str, Any] = {
    **RULES_OFF,
    "max_line_chars": 1000,
    "max_mean_line_chars": 100,
    "min_alnum_fraction": 0.25,
    "drop_generated": True,
}

# ------------------------------------------------------------------ MinHash and LSH


def test_word_hashes_do_not_depend_on_where_a_word_stands() -> None:
    h = MinHasher(Params())
    a, b = h.word_hashes(b"foo bar_1 baz"), h.word_hashes(b"  (qux) foo bar_1 baz;")
    assert len(a) == 3 and np.array_equal(a, b[1:])
    assert len(set(a.tolist())) == 3


def test_signatures_estimate_jaccard() -> None:
    docs = [d["code"].encode() for d in corpus(40, max_chars=3000)]
    h = MinHasher(Params(num_perm=256, bands=16, rows=16))
    for a, b in [
        (docs[0], docs[0] + b"\nx = 1\ny = 2\n"),
        (docs[1], docs[2]),
        (docs[3], docs[3][:2000]),
    ]:
        est = float((h.signature(a) == h.signature(b)).mean())
        assert abs(est - jaccard(a, b)) < 0.1, (est, jaccard(a, b))
    assert h.signature(b"too few words") is None


def test_lsh_bands_put_the_s_curve_at_the_threshold() -> None:
    bands, rows = lsh_bands(0.7, 128)
    assert (Params().bands, Params().rows) == (bands, rows)  # the defaults are this choice
    assert bands * rows <= 128 and abs(Params(128, bands, rows).threshold - 0.7) < 0.06
    p = lambda s: 1 - (1 - s**rows) ** bands  # noqa: E731
    assert p(0.9) > 0.99 and p(0.5) < 0.05


def test_components_keep_the_smallest_of_each_cluster() -> None:
    edges = np.array([(2, 7), (7, 3), (5, 6), (0, 9), (9, 8)], dtype=[("a", "<u4"), ("b", "<u4")])
    root = components(11, lambda: iter([edges[:2].astype(EDGE), edges[2:].astype(EDGE)]))
    assert root.tolist() == [0, 1, 2, 2, 4, 5, 5, 2, 0, 0, 10]


# ------------------------------------------------------------------ the stage


def near_copies() -> tuple[list[dict[str, Any]], set[int], set[int]]:
    """Real code; 6 of the later documents are near-copies of earlier ones (a few lines
    edited or appended, in other repositories); returns (docs, copies' rows, originals)."""
    docs = corpus(120, max_chars=3000)
    for i, d in enumerate(docs):
        d["code"] = f"# file {i}\n{d['code']}"
    copies, originals = set(), set()
    for k, src in enumerate((3, 11, 25, 40, 41, 60)):
        lines = docs[src]["code"].split("\n")
        if k % 2:
            lines[5] = "import os  # edited"
            lines[9] = "value = compute(value)  # edited"
        else:
            lines += ["", "def appended():", "    return 42"]
        docs.append({**docs[src], "code": "\n".join(lines), "repo_name": f"fork/{k}"})
        copies.add(len(docs) - 1)
        originals.add(src)
    return docs, copies, originals


def dedup_args(src: Path, out: Path, **over: Any) -> list[str]:
    base = {
        "input": src,
        "output": out,
        "workers": 1,
        "batch_bytes": 20000,
        "max_rss_gb": 64,
        "min_available_gb": 0,
        "progress_seconds": 0.5,
    }
    return [f"{k}={v}" for k, v in {**base, **over}.items()]


def dropped_rows(out: Path) -> set[int]:
    ids = np.load(out / decision.DROPPED)
    return {int(i & ((1 << decision.ROW_BITS) - 1)) for i in ids}


def test_near_copies_are_found_unrelated_files_kept_first_one_kept(tmp_path: Path) -> None:
    docs, copies, originals = near_copies()
    src = make_input(tmp_path / "in", docs, files=1, row_group_size=50)
    out = tmp_path / "out"
    assert main(["dedup", *dedup_args(src, out)]) == 0
    gone = dropped_rows(out)
    assert copies <= gone  # every near-copy found, the earlier original kept
    assert not (gone & originals)
    # anything else dropped is a real near-duplicate of an earlier document
    for row in gone - copies:
        assert any(
            jaccard(docs[row]["code"].encode(), docs[k]["code"].encode()) > 0.5 for k in range(row)
        )
    state = json.loads((out / decision.STATE).read_text())
    assert state["complete"] and state["counts"]["dropped"] == len(gone)
    assert not list(out.glob("keys-*.bin")) and not (out / "edges.bin").exists()

    # tokenize skips exactly those rows, as near_duplicate
    shards = tmp_path / "shards"
    assert tokenize(src, shards, **{**SAME_RULES, "near_dedup": out}) == 0
    c = json.loads((shards / "manifest.json").read_text())["counts"]
    assert c["skipped"]["near_duplicate"] == len(gone)
    assert c["read"] == c["tokenized"] + sum(c["skipped"].values())


def test_the_decision_is_the_same_for_any_worker_count_and_reruns_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs, _, _ = near_copies()
    src = make_input(tmp_path / "in", docs, files=3, row_group_size=20)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["dedup", *dedup_args(src, one, workers=1, batch_bytes=9000)]) == 0
    assert main(["dedup", *dedup_args(src, two, workers=2, batch_bytes=50000)]) == 0
    assert (one / decision.DROPPED).read_bytes() == (two / decision.DROPPED).read_bytes()
    capsys.readouterr()
    assert main(["dedup", *dedup_args(src, one)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["dedup", *dedup_args(src, one, threshold=0.9)]) == 2
    assert "threshold 0.7 -> 0.9" in capsys.readouterr().err
    assert main(["dedup", *dedup_args(src, one, threshold=0.9, force=True)]) == 0
    # tokenize refuses a decision made with other rules or for other inputs
    assert (
        tokenize(src, tmp_path / "s", **{**SAME_RULES, "near_dedup": one, "max_line_chars": 10})
        == 2
    )
    err = capsys.readouterr().err
    assert "made for other inputs or rules (max_line_chars 1000 -> 10)" in err, err
    assert (
        tokenize(
            tmp_path / "in" / "part-0.parquet", tmp_path / "s", **{**SAME_RULES, "near_dedup": one}
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "made for other inputs or rules (input" in err and "removed" in err, err


def grid(edits: tuple[int, ...] = ()) -> str:
    """80 distinct words, 8 a line; the words at `edits` replaced by others."""
    words = [f"edit{i}" if i in edits else f"name{i}" for i in range(80)]
    return "\n".join(" ".join(words[i : i + 8]) for i in range(0, 80, 8)) + "\n"


# Found by search: with word 5-grams, 128 permutations and 14 bands of 9 rows, the
# signatures of grid() and grid(LAST_BAND_ONLY) agree on band 13 (the last) and on no other.
LAST_BAND_ONLY = (3, 20)


@pytest.mark.parametrize("config", ["configs/dedup.yaml", "the stage's defaults"])
def test_the_stage_runs_with_word_5_grams_and_14_bands_of_9_rows(
    tmp_path: Path, config: str
) -> None:
    """The documented parameters, through the real stage: a change of 5 or 14 fails here."""
    h = MinHasher(Params(num_perm=128, bands=14, rows=9, shingle=5))
    a, b = (h.signature(grid(e).encode()) for e in ((), LAST_BAND_ONLY))
    assert a is not None and b is not None
    agree = (a[:126].reshape(14, 9) == b[:126].reshape(14, 9)).all(axis=1)
    assert agree.nonzero()[0].tolist() == [13]
    texts = [
        "alpha beta gamma delta epsilon\n",  # 5 words: one shingle,
        "alpha beta gamma delta epsilon\n",  # so its copy is dropped
        "zeta eta theta iota\n",  # 4 words: no shingle, no signature,
        "zeta eta theta iota\n",  # so its copy is kept (exact dedup is tokenize's)
        grid(),
        grid(LAST_BAND_ONLY),  # a candidate through the last band alone
    ]
    docs = [
        {"code": t, "repo_name": f"r/{i}", "path": f"{i}.py", "language": "Python"}
        for i, t in enumerate(texts)
    ]
    src = make_input(tmp_path / "in", docs, files=1)
    out = tmp_path / "out"
    given = ["--config", str(REPO / config)] if config.endswith(".yaml") else []
    if not given:  # an empty config file: every key at the dataclass's default
        (tmp_path / "empty.yaml").write_text("{}\n")
        given = ["--config", str(tmp_path / "empty.yaml")]
    assert main(["dedup", *given, *dedup_args(src, out)]) == 0
    state = json.loads((out / decision.STATE).read_text())
    assert state["params"] == {"num_perm": 128, "bands": 14, "rows": 9, "shingle": 5}
    assert state["counts"]["signed"] == 4
    assert dropped_rows(out) == {1, 5}


@pytest.mark.slow
def test_sigkill_in_the_middle_then_rerun_gives_the_same_decision(tmp_path: Path) -> None:
    docs, _, _ = near_copies()
    docs = docs * 3  # more batches to kill between; the copies' copies are near-dups too
    src = make_input(tmp_path / "in", docs, files=4, row_group_size=20)
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(["dedup", *dedup_args(src, ref)]) == 0
    opts = dedup_args(src, out, workers=2, checkpoint_mb=0.001, batch_bytes=8000)
    cmd = [sys.executable, "-m", "pipeline", "dedup", *opts]
    total = len(docs) * 14  # band records when every document is signed
    for at_least in (1, total // 2):  # after the first checkpoint, then halfway
        proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                state = decision.read_state(out)
            except Exception:  # being replaced this instant
                state = None
            if state and sum(state.records or []) >= at_least:
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = decision.read_state(out)
        assert state is not None and not state.complete, "finished before it was killed"
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / decision.DROPPED).read_bytes() == (ref / decision.DROPPED).read_bytes()
    a = json.loads((out / decision.STATE).read_text())
    b = json.loads((ref / decision.STATE).read_text())
    assert a["counts"] == b["counts"] and a["sha256"] == b["sha256"]


def test_a_full_disk_is_one_line_and_a_rerun_elsewhere_resumes(tmp_path: Path) -> None:
    """Output on a 48 KiB tmpfs (a private mount namespace): ENOSPC while signing."""
    docs, _, _ = near_copies()
    src = make_input(tmp_path / "in", docs * 3, files=4, row_group_size=20)
    ref = tmp_path / "ref"
    assert main(["dedup", *dedup_args(src, ref)]) == 0
    tmpfs_or_skip(tmp_path)
    disk, copy = tmp_path / "disk", tmp_path / "copy"
    disk.mkdir()
    opts = dedup_args(src, disk / "out", checkpoint_mb=0.001)
    cmd = " ".join([sys.executable, "-m", "pipeline", "dedup", *opts])
    script = (
        f"mount -t tmpfs -o size=48k none {disk} && cd {REPO} && "
        f"{{ {cmd} 2>{tmp_path}/err; echo $? > {tmp_path}/rc; }}; cp -a {disk}/out {copy}"
    )
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, timeout=120)
    err = (tmp_path / "err").read_text().strip().splitlines()
    assert int((tmp_path / "rc").read_text()) == 3, err
    assert err[-1].startswith("codegpt dedup: error: disk full writing"), err[-1]
    assert "rerun the same command to resume" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert main(["dedup", *dedup_args(src, copy)]) == 0
    assert (copy / decision.DROPPED).read_bytes() == (ref / decision.DROPPED).read_bytes()


def test_the_state_record_reads_back_and_reads_an_older_file(tmp_path: Path) -> None:
    """dedup.json's one writer and one reader agree field by field; a state written before
    the position lost its token offset still resumes; a damaged field is one line."""
    state = decision.DedupState(
        inputs=[{"path": "a.parquet", "size": 1, "mtime_ns": 2}],
        settings={"threshold": 0.7},
        rules={"max_doc_bytes": 9},
        params={"num_perm": 128, "bands": 14, "rows": 9, "shingle": 5},
        partitions=4,
        records=[1, 2, 3, 4],
        position=Position(1, 2, 3),
        phase="cluster",
        counts=decision.DedupCounts(read=9, text_bytes=99, signed=8, skipped={"null": 1}),
        files_skipped=[{"file": "b", "row_group": 0, "error": "bad"}],
    )
    decision.write_progress(tmp_path, state)
    assert decision.read_state(tmp_path) == state
    data = json.loads((tmp_path / decision.STATE).read_text())
    data["position"]["token_offset"] = 0  # as the code before batch-boundary resume wrote it
    (tmp_path / decision.STATE).write_text(json.dumps(data))
    assert decision.read_state(tmp_path) == state
    decision.write(tmp_path, state, np.array([5, 3, 5], dtype=np.uint64))
    done = decision.read_state(tmp_path)
    assert done is not None and done.complete and done.sha256 and done.records == [1, 2, 3, 4]
    assert np.load(tmp_path / decision.DROPPED).tolist() == [3, 5]
    del data["counts"]
    (tmp_path / decision.STATE).write_text(json.dumps(data))
    with pytest.raises(InputError, match="malformed field.*counts.*force=true"):
        decision.read_state(tmp_path)
