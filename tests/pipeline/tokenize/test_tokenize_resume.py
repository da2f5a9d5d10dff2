"""Interruptions in real subprocesses: SIGKILL, the memory watchdog, a full disk.

Each ends with a rerun of the same command and a byte-for-byte comparison
with an uninterrupted run (shards, shard lists and counts in the manifest).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from pipeline.__main__ import main
from tests.conftest import tmpfs_or_skip
from tests.pipeline.tokenize.tokenize_fixtures import (
    REPO,
    args,
    corpus,
    make_input,
    shard_bytes,
    tokenize,
    tokenize_subprocess,
)

pytestmark = pytest.mark.slow

# everything on: exact dedup, the quality filters and a near-dedup decision (the fixture's)
OPTS = {
    "shard_tokens": 2000,
    "workers": 2,
    "batch_bytes": 15000,
    "dedup": "exact",
    "max_line_chars": 1000,
    "max_mean_line_chars": 100,
    "min_alnum_fraction": 0.25,
    "drop_generated": True,
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The input, and an uninterrupted run's output (workers=1: another path, same bytes)."""
    base = tmp_path_factory.mktemp("ref")
    docs = corpus(400, max_chars=2000)
    docs += [{**d, "code": d["code"] + "\n# a fork\n", "repo_name": "fork/x"} for d in docs[:30]]
    # too short for a signature (under 5 words): exact dedup's, not near-dedup's
    docs += [{**docs[i], "code": "x = 1\n", "repo_name": f"tiny/{i}"} for i in range(0, 400, 40)]
    src = make_input(base / "in", docs, files=4, row_group_size=40)
    near = base / "near"
    assert main(["dedup", f"input={src}", f"output={near}", "workers=1", "max_rss_gb=64"]) == 0
    OPTS["near_dedup"] = near
    assert tokenize(src, base / "ref", **{**OPTS, "workers": 1}) == 0
    counts = _manifest(base / "ref")["counts"]["skipped"]
    assert counts["duplicate"] and counts["near_duplicate"] >= 30  # every rule has work here
    return src, base / "ref"


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def _same_result(out, ref):
    assert shard_bytes(out) == shard_bytes(ref)
    a, b = _manifest(out), _manifest(ref)
    assert a["complete"] and a["counts"] == b["counts"] and a["shards"] == b["shards"]
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.partial"))
    assert not (out / "dedup.digests").exists()


def _n_shards(out):
    try:
        m = _manifest(out)
    except (OSError, ValueError):
        return 0
    return len(m["shards"]["train"]) + len(m["shards"]["val"])


def _kill_when(proc, out, shards_at_least=None, after_s=None, limit_s=60.0):
    """SIGKILL proc once the manifest lists enough shards (or after a delay)."""
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < limit_s:
        if shards_at_least is not None and _n_shards(out) >= shards_at_least:
            break
        if after_s is not None and time.monotonic() - t0 >= after_s:
            break
        time.sleep(0.002)
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # workers must not keep its stdout open
    # and none of its workers (or the forkserver) may outlive it
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"processes left behind by a killed run: {alive}"
    return proc.returncode


def test_sigkill_anywhere_then_rerun_is_byte_identical(reference, tmp_path):
    src, ref = reference
    n_ref = _n_shards(ref)
    out = tmp_path / "out"
    for at_least in (3, n_ref // 2):
        rc = _kill_when(tokenize_subprocess(src, out, **OPTS), out, shards_at_least=at_least)
        assert rc == -signal.SIGKILL, "the run finished before it could be killed"
        m = _manifest(out)
        assert not m["complete"] and _n_shards(out) >= at_least
        c = m["counts"]
        assert c["read"] == c["tokenized"] + sum(c["skipped"].values())
    # and once more at an arbitrary instant (possibly mid-write, possibly after the end)
    _kill_when(tokenize_subprocess(src, out, **OPTS), out, after_s=1.2)
    proc = tokenize_subprocess(src, out, **OPTS)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    _same_result(out, ref)


def test_watchdog_stops_cleanly_and_the_rerun_finishes(reference, tmp_path):
    src, ref = reference
    out = tmp_path / "out"
    _kill_when(tokenize_subprocess(src, out, **OPTS), out, shards_at_least=4)
    m_before = _manifest(out)
    listed = [e["name"] for s in ("train", "val") for e in m_before["shards"][s]]
    kept = {name: (out / name).read_bytes() for name in listed}  # the complete shards
    assert len(kept) >= 4
    proc = tokenize_subprocess(src, out, **{**OPTS, "max_rss_gb": 0.02})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "Traceback" not in err, err  # one line, not a pool's or a resource tracker's trace
    last = err.strip().splitlines()[-1]
    assert last.startswith("codegpt tokenize: error: resident memory"), last
    assert "max_rss_gb=0.02" in last and "rerun the same command" in last
    assert "complete shards kept" in last
    for name, data in kept.items():  # every complete shard intact
        assert (out / name).read_bytes() == data
    assert not list(out.glob("*.tmp"))
    m_after = _manifest(out)
    for split in ("train", "val"):  # the manifest still lists them (and maybe more)
        before = m_before["shards"][split]
        assert m_after["shards"][split][: len(before)] == before
    assert tokenize(src, out, **OPTS) == 0
    _same_result(out, ref)


def test_full_disk_stops_cleanly_and_resumes_elsewhere(reference, tmp_path):
    """Output on a 96 KiB tmpfs (a private mount namespace): ENOSPC after a few shards."""
    src, ref = reference
    tmpfs_or_skip(tmp_path)
    disk, copy = tmp_path / "disk", tmp_path / "copy"
    disk.mkdir()
    cmd = " ".join([sys.executable, "-m", "pipeline", "tokenize", *args(src, disk / "out", **OPTS)])
    script = (
        f"mount -t tmpfs -o size=96k none {disk} && cd {REPO} && "
        f"{{ {cmd} 2>{tmp_path}/err; echo $? > {tmp_path}/rc; }}; cp -a {disk}/out {copy}"
    )
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, timeout=120)
    rc = int((tmp_path / "rc").read_text())
    err = (tmp_path / "err").read_text().strip().splitlines()
    assert rc == 3, err
    assert err[-1].startswith("codegpt tokenize: error: disk full writing"), err[-1]
    assert "rerun the same command" in err[-1]
    assert not list(copy.glob("*.tmp"))
    done = _manifest(copy)
    names = [e["name"] for s in ("train", "val") for e in done["shards"][s]]
    assert names, "the disk filled before any shard was complete"
    ref_bytes = shard_bytes(ref)
    for name in names:  # every shard the manifest lists is complete and right
        assert (copy / name).read_bytes() == ref_bytes[name]
        assert np.load(copy / name).dtype == np.uint16
    assert tokenize(src, copy, **OPTS) == 0
    _same_result(copy, ref)
