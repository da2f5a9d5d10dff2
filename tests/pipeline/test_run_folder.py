"""A real run whose metrics.jsonl was cut by a kill: every stage that reads it keeps the good lines.

One reader (model/metrics.py) serves plan, report, plot and the trainer's
resume; a line cut mid-write is skipped with a warning naming the file, never
a reason to drop the measured steps (plan once fell back to smoke.ok's ETA).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from model import rundir
from model.checkpoint import list_checkpoints
from model.metrics import FILE, read_metrics
from pipeline.__main__ import main
from pipeline.train import train
from tests.model.train_fixtures import tiny_config, tiny_values

TIMING = ("ms", "tokens_per_s")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, shards: Path) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    cfg = tiny_config(shards, run)
    rundir.write_config(cfg, run)
    assert train(cfg) == 0
    rundir.write_smoke_stamp(run, rundir.SmokeStamp(ms_per_step=999.0))  # must not be used
    return run


def cut_copy(run: Path, dest: Path) -> Path:
    """A copy of the run whose last metrics line stops halfway, as a SIGKILL leaves it."""
    shutil.copytree(run, dest)
    text = (dest / FILE).read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    (dest / FILE).write_text(text[: len(text) - len(last) // 2 - 1])
    return dest


def test_the_reader_skips_only_the_cut_line(
    finished: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    whole = read_metrics(finished)
    cut = cut_copy(finished, tmp_path / "cut")
    with caplog.at_level(logging.WARNING, logger="model.metrics"):
        assert read_metrics(cut) == whole[:-1]
    assert f"{cut / FILE}: skipped 1 unreadable line(s) (line {len(whole)};" in caplog.text


def test_plan_report_and_plot_use_the_good_lines(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = cut_copy(finished, tmp_path / "cut")
    good = read_metrics(cut)
    last_step = [r for r in good if "ms" in r][-1]["step"]
    shape = [f"{k}={v}" for k, v in tiny_values(Path("x"), cut).items() if k not in ("data",)]
    gpu = ["gpu_gb=12", "gpu=NVIDIA GeForce RTX 4070", "format=json"]
    assert main(["plan", *shape, *gpu]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["measured_from"] == str(cut / FILE)  # not smoke.ok
    assert plan["measured_ms_per_step"] != 999.0
    assert main(["report", f"out_dir={cut}"]) == 0
    assert f"steps        {last_step} / 20" in capsys.readouterr().out
    assert main(["plot", f"out_dir={cut}"]) == 0
    assert (cut / "loss.png").stat().st_size > 1000


def test_a_resume_after_a_cut_line_ends_with_the_uninterrupted_metrics(
    finished: Path, tmp_path: Path, shards: Path
) -> None:
    cut = cut_copy(finished, tmp_path / "cut")
    for ckpt in list_checkpoints(cut)[1:]:  # back to the first checkpoint (step 10)
        ckpt.unlink()
    assert train(tiny_config(shards, cut)) == 0

    def steady(run: Path) -> list[dict[str, object]]:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run)]

    assert steady(cut) == steady(finished)
