"""The workers' reading (reading.py, pool.read_in_order): a row group decoded once into shared
memory, cut into row ranges, every row served once, in order, and every segment released."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.corpus import reading, source
from pipeline.corpus.batches import FileError, Position, Reading
from pipeline.corpus.pool import Source, Work, read_in_order
from pipeline.corpus.watchdog import MemoryWatchdog
from tests.pipeline.tokenize.tokenize_fixtures import REPO, args, corpus, write_parquet

HOW = Reading()  # github-code's columns


def _segments() -> set[str]:
    """This process's segments (pool.py names them after the reading's main pid): another
    tokenize on the machine, or a test beside this one, has segments of its own."""
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob(f"codegpt-{os.getpid()}-*")} if shm.is_dir() else set()


def no_warm_up(_main_pid: int) -> None:
    """A worker initializer with nothing to build (picklable, unlike a lambda)."""


def first_text(batch: object) -> list[bytes]:
    """A work function: the texts of the batch (tests what the workers see)."""
    return [batch.text.value(i) for i in range(batch.num_rows)]  # type: ignore[attr-defined]


def test_a_row_group_decoded_once_then_cut_into_ranges(tmp_path: Path) -> None:
    docs = corpus(90)
    f = write_parquet(tmp_path / "a.parquet", docs, row_group_size=90)
    d = reading.decode_group(f, 0, 0, 10, 0, HOW, 400_000, f"codegpt-{os.getpid()}-test")
    assert isinstance(d, reading.Decoded) and d.info.row == 10 and len(d.null) == 80
    spans = reading.ranges(d, 20_000)
    assert spans[0][0] == 0 and spans[-1][1] == 80 and len(spans) > 2
    assert all(a < b for a, b in spans) and all(
        spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1)
    )
    got = [t for a, b in spans for t in reading.run_range(reading.task(d, a, b, None), first_text)]
    assert got == [x["code"].encode() for x in docs[10:]]
    reading.release(d.shm)
    assert d.shm not in _segments()


@pytest.mark.parametrize("workers", [1, 2])
def test_read_in_order_serves_every_row_once_in_order(tmp_path: Path, workers: int) -> None:
    docs = corpus(200)
    files = [
        write_parquet(tmp_path / f"{k}.parquet", docs[k * 100 : (k + 1) * 100], 30)
        for k in range(2)
    ]
    infos = source.survey(files, HOW, "fail")
    groups = [i.groups for i in infos]  # type: ignore[union-attr]
    # a budget smaller than any row group: one decoded group in flight at a time
    src = Source(files, groups, HOW, 9000, budget=1)
    work = Work(first_text, no_warm_up, "tests.pipeline.corpus.test_reading")
    assert _segments() == set()
    with MemoryWatchdog(64, 0) as dog:
        out = list(read_in_order(src, Position(0, 1, 5), workers, work, dog, lambda: ""))
    rows = [(info.file_index, info.row_group, info.row) for info, _ in out]
    assert rows == sorted(rows) and rows[0] == (0, 1, 5)
    texts = [t for _, ts in out for t in ts]
    assert texts == [d["code"].encode() for d in docs[35:]]
    assert _segments() == set()  # every segment unlinked


def test_an_unreadable_file_and_a_corrupt_group_come_in_their_place(tmp_path: Path) -> None:
    docs = corpus(60)
    good = write_parquet(tmp_path / "0.parquet", docs[:30], 10)
    bad = tmp_path / "1.parquet"
    bad.write_bytes(b"not parquet")
    files = [good, bad, write_parquet(tmp_path / "2.parquet", docs[30:], 10)]
    infos = source.survey(files, HOW, "skip")
    assert isinstance(infos[1], str)
    groups = [i if isinstance(i, str) else i.groups for i in infos]
    src = Source(files, groups, HOW, 9000, budget=2**30)
    work = Work(first_text, no_warm_up, "tests.pipeline.corpus.test_reading")
    with MemoryWatchdog(64, 0) as dog:
        out = list(read_in_order(src, Position(), 1, work, dog, lambda: ""))
    where = [i.file_index for i, _ in out]
    at = next(k for k, (i, _) in enumerate(out) if isinstance(i, FileError))
    assert where[at] == 1 and set(where[:at]) == {0} and set(where[at + 1 :]) == {2}
    assert [t for i, ts in out if ts for t in ts] == [d["code"].encode() for d in docs]
    assert os.path.exists(good)


def test_a_column_that_decodes_larger_than_its_footer_says_grows_its_segment(
    tmp_path: Path,
) -> None:
    # dictionary encoding: 200 copies of one 5 KB text are ~5 KB uncompressed in the footer
    # but 1 MB decoded, so the segment is grown (and named name.K) while decoding
    docs = [dict(d, code="x = 1\n" * 800) for d in corpus(200)]
    f = write_parquet(tmp_path / "a.parquet", docs, row_group_size=200)
    layout = source.survey([f], HOW, "fail")[0]
    assert not isinstance(layout, str) and layout.groups[0][1] < 100_000
    name = f"codegpt-{os.getpid()}-grow"
    d = reading.decode_group(f, 0, 0, 0, 0, HOW, layout.groups[0][1], name)
    assert isinstance(d, reading.Decoded) and d.shm.startswith(name + ".")
    assert d.text_bytes == 200 * len(docs[0]["code"])
    spans = reading.ranges(d, 100_000)
    got = [t for a, b in spans for t in reading.run_range(reading.task(d, a, b, None), first_text)]
    assert got == [x["code"].encode() for x in docs]
    reading.discard(name)
    assert not {s for s in _segments() if s.startswith(name)}


def test_a_full_dev_shm_while_growing_leaves_no_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grown copy cannot be made (ShmFull, as from a full /dev/shm): the first segment
    must go too, or it would hold its RAM until the next reboot."""
    docs = [dict(d, code="x = 1\n" * 800) for d in corpus(200)]  # grows, as in the test above
    f = write_parquet(tmp_path / "a.parquet", docs, row_group_size=200)
    layout = source.survey([f], HOW, "fail")[0]
    assert not isinstance(layout, str)
    real = reading._create

    def create(name: str, size: int):  # type: ignore[no-untyped-def]
        if "." in name:  # the grown copy
            raise reading.ShmFull("/dev/shm has 0 MiB free (test)")
        return real(name, size)

    monkeypatch.setattr(reading, "_create", create)
    name = f"codegpt-{os.getpid()}-full"
    with pytest.raises(reading.ShmFull):
        reading.decode_group(f, 0, 0, 0, 0, HOW, layout.groups[0][1], name)
    assert not {s for s in _segments() if s.startswith(name)}


def test_a_read_stopped_half_way_leaves_no_segment(tmp_path: Path) -> None:
    docs = corpus(400)
    files = [write_parquet(tmp_path / f"{k}.parquet", docs[k::4], 20) for k in range(4)]
    infos = source.survey(files, HOW, "fail")
    src = Source(files, [i.groups for i in infos], HOW, 5000, budget=2**30)  # type: ignore[union-attr]
    work = Work(first_text, no_warm_up, "tests.pipeline.corpus.test_reading")
    assert _segments() == set()
    with MemoryWatchdog(64, 0) as dog:
        reader = read_in_order(src, Position(), 2, work, dog, lambda: "")
        next(reader)  # several decodes are queued or running now
        reader.close()  # what an error in the stage does: the pool stopped mid-flight
    assert _segments() == set()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_dev_shm_is_one_line_that_names_the_remedy(tmp_path: Path, workers: int) -> None:
    """/dev/shm a 256 KiB tmpfs (a private mount namespace), a row group of ~1 MB of text."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not available")
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=256k none /dev/shm"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode().strip()}")
    src = tmp_path / "in"
    src.mkdir()
    write_parquet(src / "a.parquet", corpus(300, max_chars=6000), row_group_size=300)
    out = tmp_path / "out"
    cmd = " ".join([sys.executable, "-m", "pipeline", "tokenize", *args(src, out, workers=workers)])
    script = f"mount -t tmpfs -o size=256k none /dev/shm && cd {REPO} && exec {cmd}"
    run = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120
    )
    err = run.stderr.strip().splitlines()
    assert run.returncode == 3, err
    assert err[-1].startswith("codegpt tokenize: error: /dev/shm has 0 MiB free"), err[-1]
    assert "--shm-size" in err[-1] and "rerun" in err[-1]
    assert not any("Traceback" in line or "leaked" in line for line in err)
