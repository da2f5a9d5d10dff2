"""bench/gpu_session.sh, the prepared GPU session: its CPU dry run, so it cannot rot;
what comes back fits what a lent machine returns; a failed step is reported, not fatal."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench_fixtures import dry_run, session
from tests.conftest import REPO, Shared

NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # what the device tool brings back
STEPS = {"1": ["gpu-tests", "sample", "memory", "memory-compile"], "2": ["train", "serve"]}


@pytest.mark.slow
@pytest.mark.parametrize("part", ["1", "2"])
def test_the_session_dry_runs_on_the_cpu_and_returns_what_a_lent_machine_can(
    part: str, shared: Shared
) -> None:
    folder = dry_run(shared, part)
    rc, _, log = (folder / "rc").read_text().partition("\n")
    assert rc == "0", log
    out = folder / "out"
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8 and all(len(f.parts) == 1 and NAME.match(f.name) for f in files), files
    figures = json.loads((out / "figures.json").read_text())
    ran = {name: how for name, how, _took, _limit in figures["steps"]}
    assert ran == dict.fromkeys(STEPS[part], "ok"), ran
    # the limits of a part fit one call of the device tool (10 min) with room to spare
    assert sum(limit for *_, limit in figures["steps"]) <= 9 * 60
    summary = (out / "summary.md").read_text()
    if part == "1":
        assert figures["tests"]["failures"] == 0 and figures["tests"]["skipped"] >= 1
        assert figures["memory"]["part_a"] and figures["memory-compile"]["part_a"]
        assert "planner vs measured peak (compile off, micro-batch 4): worst " in summary
        assert (out / "sample.md").is_file() and (out / "memory-compile.md").is_file()
    else:
        assert set(figures["train"]["loops"]) == {"plain", "fused", "muon"}
        assert "codegpt (fused loss, AdamW) / nanoGPT's recipe, tokens/s: " in summary
        assert (out / "train.md").is_file() and (out / "serve.md").is_file()


def test_a_step_that_fails_or_times_out_is_reported_and_the_summary_says_so(
    tmp_path: Path,
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "steps.tsv").write_text("sample\tok\t3\t90\nmemory\ttimeout\t150\t150\n")
    cmd = [sys.executable, "bench/gpu_summary.py", str(scratch), "--part", "1"]
    cmd += ["--out", str(tmp_path / "summary.md"), "--figures", str(tmp_path / "f.json")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "| memory | timeout | 150 | 150 |" in summary
    assert "planner vs measured peak (compile off): no figures (the step did not finish)" in summary
    assert "KV-cache sampling: no figures" in summary


def test_without_a_gpu_the_real_session_refuses_in_one_line(tmp_path: Path) -> None:
    done = session("1", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"gpu-session: error: {sys.executable} sees no CUDA GPU; on the CPU pass --dry-run"
    )


def test_gpu_carry_downloads_the_servers_wheels_for_the_lent_machines_python() -> None:
    done = subprocess.run(
        ["make", "-n", "gpu-carry"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    pip = next(line for line in done.stdout.splitlines() if "pip download" in line)
    pip += next(line for line in done.stdout.splitlines()[1:] if "--implementation cp" in line)
    assert "--python-version 3.12" in pip and "--only-binary=:all:" in pip and "-d .whl" in pip
    for name in ("starlette==", "uvicorn==", "httptools==", "httpx2==", "httpcore2=="):
        assert name in pip, name
    assert "tokenize" in done.stdout  # the demo shards, built by the demo's tokenize
