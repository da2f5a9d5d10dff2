"""bench/train_bench.py, the time-to-loss benchmark, on a tiny model: it runs, and the
AdamW loops it races (the plain loop, codegpt's three losses) train the same model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench_fixtures import run_bench


@pytest.mark.slow
def test_the_time_to_loss_bench_runs_and_its_adamw_loops_agree(tmp_path: Path) -> None:
    out = tmp_path / "train.md"
    run_bench("train_bench.py", out, "--steps", "8", "--eval-every", "4", "--memory-steps", "1")
    rows = {
        cells[0]: cells
        for line in out.read_text().splitlines()
        if line.startswith("| ")
        and len(cells := [c.strip() for c in line.strip("|").split("|")]) == 8
    }
    names = [n for n in rows if n.startswith(("plain loop", "codegpt"))]
    assert len(names) == 6, rows.keys()
    finals = {n: float(rows[n][3]) for n in names}
    adamw = [v for n, v in finals.items() if "Muon" not in n]  # their val loss at step 8
    assert max(adamw) - min(adamw) < 1e-3, finals  # same updates up to float rounding
    plain = next(n for n in names if n.startswith("plain loop"))
    assert rows[plain][6] == "1.00x" and rows[plain][4] == "8"  # the target is its own end
    assert "time to the target, codegpt's default (fused loss, Muon)" in out.read_text()
    muon = "codegpt, fused loss, Muon (the default)"
    ac = next(n for n in names if "activation checkpointing" in n)
    assert abs(finals[ac] - finals[muon]) < 1e-3, finals  # recomputing is the same math
    assert "activation checkpointing: the default's step with it / without" in out.read_text()


@pytest.mark.slow
def test_the_gpu_training_bench_dry_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "train-gpu.md"
    run_bench("train_gpu.py", out, "--steps", "4", "--eval-every", "2", "--warmup", "1")
    text = out.read_text()
    assert text.count("| codegpt, ") == 5 and "| plain loop" in text
    assert "codegpt (fused loss, AdamW) / the plain loop, tokens/s: " in text
    assert "codegpt's default (fused loss, Muon): " in text
