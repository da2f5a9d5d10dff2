"""`python -m pipeline plot` and `report` on a real tiny run and on written metrics files."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from model import rundir
from model.checkpoint import config_from_dict
from model.metrics import read_metrics
from model.rundir import write_config as write_run_config
from pipeline.__main__ import main
from pipeline.plot import _running_mean
from pipeline.report import summary_lines, train_seconds
from pipeline.train import train
from tests.model.train_fixtures import tiny_config, write_tiny_shards


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("real")
    cfg = tiny_config(write_tiny_shards(tmp / "shards"), tmp / "demo", max_iters=10)
    write_run_config(cfg, tmp / "demo")
    assert train(cfg) == 0
    return tmp / "demo"


def write_metrics(run: Path, recs: list[dict[str, object]], max_iters: int | None = 1000) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    if max_iters is not None:
        (run / "config.yaml").write_text(f"max_iters: {max_iters}\n")
    return run


def steps(n: int, every: int = 10, ms: float = 100.0) -> list[dict[str, object]]:
    return [
        {
            "step": s,
            "loss": 11.0 / (1 + s / 50),
            "lr": 1e-3,
            "tokens": s * 512,
            "ms": ms,
            "tokens_per_s": 5120.0,
        }
        for s in range(every, n + 1, every)
    ]


def png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h, w = matplotlib.image.imread(path).shape[:2]
    return w, h


def test_plot_of_a_real_run(real_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", f"out_dir={real_run}"]) == 0
    w, h = png_size(real_run / "loss.png")
    assert w > 600 and h > 400
    assert [p.name for p in real_run.iterdir() if ".tmp" in p.name] == []  # no tmp left
    assert "loss.png" in capsys.readouterr().out


def test_report_of_a_real_run(real_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", f"out_dir={real_run}"]) == 0
    out = capsys.readouterr().out
    recs = read_metrics(real_run)
    best = min((r for r in recs if "val_loss" in r), key=lambda r: r["val_loss"])
    assert "steps        10 / 10 (100.0%)" in out
    assert f"best {best['val_loss']:.4f} at step {best['step']}" in out
    assert f"tokens seen  {10 * 4 * 2 * 32:,}" in out
    assert "ETA          done" in out and "ckpt-00000010.pt" in out
    assert "smoke        not run" in out


def test_report_time_eta_mfu_and_a_line_cut_by_a_kill(tmp_path: Path) -> None:
    recs = steps(400)
    recs[-1] = {**recs[-1], "mfu": 0.4123, "peak_mem_gb": 7.5}
    run = write_metrics(tmp_path / "r", recs)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 410, "loss": 1.')  # killed mid-write
    text = "\n".join(summary_lines(run))
    assert train_seconds(read_metrics(run)) == pytest.approx(40.0)
    assert "time so far  0h00m40s" in text  # 400 steps x 100 ms
    assert "ETA          0h01m00s for 600 steps at 100.0 ms/step" in text
    assert "MFU 41.2%" in text and "peak memory 7.5 GB" in text
    assert "val loss     no eval yet" in text and "checkpoints  none" in text


def test_report_smoke_stamp_matches_or_not(real_run: Path) -> None:
    original = (real_run / "config.yaml").read_text()
    cfg = config_from_dict(yaml.safe_load(original))
    stamp = rundir.SmokeStamp(
        config_hash=rundir.smoke_fingerprint(cfg), first_loss=10.9, last_loss=9.0
    )
    rundir.write_smoke_stamp(real_run, stamp)
    try:
        assert "passed (loss 10.900 -> 9.000), matches" in "\n".join(summary_lines(real_run))
        (real_run / "config.yaml").write_text(original.replace("n_layer: 2", "n_layer: 3"))
        assert "different config" in "\n".join(summary_lines(real_run))
    finally:
        (real_run / rundir.SMOKE_FILE).unlink()
        (real_run / "config.yaml").write_text(original)


def test_plot_with_one_point_and_a_long_run(tmp_path: Path) -> None:
    one = write_metrics(tmp_path / "one", [{"step": 0, "val_loss": 10.9, "tokens": 0}], None)
    assert main(["plot", f"out_dir={one}"]) == 0
    assert png_size(one / "loss.png")[0] > 600
    long = write_metrics(tmp_path / "long", steps(5000), 10_000)
    assert main(["plot", f"out_dir={long}", f"dest={tmp_path / 'x.png'}"]) == 0
    assert png_size(tmp_path / "x.png")[0] > 600


def test_running_mean_is_centred() -> None:
    assert _running_mean([0, 0, 3, 0, 0], 3) == [0, 1, 1, 1, 0]
    assert _running_mean([1.0, 2.0], 1) == [1.0, 2.0]


def test_missing_metrics_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for stage in ("plot", "report"):
        assert main([stage, f"out_dir={tmp_path}"]) == 2
        err = capsys.readouterr().err
        assert "metrics.jsonl not found; train first" in err and err.count("\n") == 1


def test_report_shows_what_the_model_sees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run's shard folder, through its manifest: kept documents, rules, languages."""
    from tests.pipeline.tokenize.tokenize_fixtures import corpus, make_input, tokenize

    src = make_input(tmp_path / "in", corpus(80) + corpus(20), files=2)
    assert tokenize(src, tmp_path / "shards", dedup="exact", drop_generated=True) == 0
    run = write_metrics(tmp_path / "run", steps(20), None)
    (run / "config.yaml").write_text(f"max_iters: 100\ndata: {tmp_path / 'shards'}\n")
    text = "\n".join(summary_lines(run))
    m = json.loads((tmp_path / "shards" / "manifest.json").read_text())["counts"]
    assert f"100 documents read, {m['tokenized']:,} kept" in text
    assert f"duplicate {100 * m['skipped']['duplicate'] / 100:.1f} %" in text
    assert "languages    Python" in text and "Markdown" in text
