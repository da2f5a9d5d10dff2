"""The smoke stage: passes on a sane tiny run, fails with its numbers on a broken model."""

from __future__ import annotations

import json
import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from model import config as configlib
from model import rundir, tokenizer, trainer
from model.checkpoint import list_checkpoints
from model.errors import CheckFailed, StateError
from model.gpt import GPT, GPTConfig
from model.shards import write_shard
from model.train_config import TrainConfig
from pipeline import smoke
from pipeline import train as train_stage
from pipeline.__main__ import main
from pipeline.sample_data import stage as sample_data
from pipeline.tokenize import manifest
from tests.conftest import REPO, Shared
from tests.model.train_fixtures import gpt2_tokenizer_info, tiny_config


def test_smoke_passes_writes_the_stamp_and_leaves_no_checkpoint(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(shards, tmp_path / "run")
    report = smoke.run_smoke(cfg)
    assert report.losses[0] - report.losses[-1] >= cfg.smoke_min_drop
    assert report.roundtrip[0] == pytest.approx(report.roundtrip[1], abs=1e-6)
    assert len(report.sample) == smoke.SAMPLE_TOKENS and report.mfu is None
    stamp = json.loads((tmp_path / "run" / rundir.SMOKE_FILE).read_text())
    assert stamp["config_hash"] == rundir.smoke_fingerprint(cfg)
    assert not list_checkpoints(tmp_path / "run") and not (tmp_path / "run" / "smoke").exists()
    # train accepts this stamp, also with another run length; not with another model
    monkeypatch.delenv(rundir.SKIP_SMOKE_ENV, raising=False)
    rundir.check_smoke_stamp(tiny_config(shards, tmp_path / "run", max_iters=999, lr=3e-3))
    with pytest.raises(StateError, match="different config.*make smoke"):
        train_stage.run(tiny_config(shards, tmp_path / "run", n_layer=3))


def test_train_refuses_without_a_stamp_unless_told_to_skip(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(shards, tmp_path / "run", max_iters=2)
    monkeypatch.delenv(rundir.SKIP_SMOKE_ENV, raising=False)
    with pytest.raises(StateError, match=r"smoke.ok not found.*run `make smoke` first"):
        train_stage.run(cfg)
    monkeypatch.setenv(rundir.SKIP_SMOKE_ENV, "1")
    assert train_stage.run(cfg) == 0


INITIAL = (
    r"initial loss \d+\.\d+ \(mean over {windows} val windows' targets that do not repeat "
    r"their input, before any step\) is not within"
)


class LoudGPT(GPT):
    """A broken initialisation: embeddings 50x too large, so the first loss is far from ln V."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__(cfg)
        with torch.no_grad():
            self.transformer.wte.weight.mul_(50.0)


def test_smoke_fails_with_its_message_on_a_broken_model(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer, "GPT", LoudGPT)
    cfg = tiny_config(shards, tmp_path / "run")
    with pytest.raises(CheckFailed, match=INITIAL.format(windows=8) + " smoke_tolerance"):
        smoke.run_smoke(cfg)
    assert not (tmp_path / "run" / rundir.SMOKE_FILE).exists()


def test_smoke_fails_when_the_loss_does_not_fall(shards: Path, tmp_path: Path) -> None:
    cfg = tiny_config(shards, tmp_path / "run", lr=1e-6, min_lr=1e-7)
    with pytest.raises(CheckFailed, match="less than smoke_min_drop=0.5"):
        smoke.run_smoke(cfg)


def write_banner_first_shards(folder: Path) -> Path:
    """GPT-2 shards of real code (this Python's standard library) whose train stream opens
    with a comment banner, one token repeated: the first micro-batch of a stream that a
    fresh model with tied embeddings scores far below ln(vocab) (its input is its target)."""
    ids: list[int] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        ids += [*tokenizer.get().encode(path.read_text(encoding="utf-8", errors="replace")[:3000])]
        ids.append(tokenizer.EOT)
        if len(ids) >= 48_000:
            break
    banner = tokenizer.get().encode("#" * 32 * 132)  # 132 tokens of 32 '#': one micro-batch of 4x33
    assert len(set(banner)) == 1 and len(banner) == 132
    write_shard(folder, "train", 0, np.array(banner + ids[:40_000], dtype=np.uint16))
    write_shard(folder, "val", 0, np.array(ids[40_000:48_000], dtype=np.uint16))
    manifest.write_for_shards(folder, gpt2_tokenizer_info())
    return folder


def test_the_initial_loss_is_checked_on_the_val_windows_not_the_first_batch(
    tmp_path: Path,
) -> None:
    """A sound model passes though its first micro-batch alone lies outside the band."""
    data = write_banner_first_shards(tmp_path / "shards")
    cfg = tiny_config(
        data,
        tmp_path / "run",
        vocab_size=50304,
        n_embd=64,
        shuffle=False,
        grad_accum=1,
        eval_iters=4,
    )
    report = smoke.run_smoke(cfg)
    ln_v = math.log(cfg.vocab_size)
    assert abs(report.losses[0] - ln_v) > cfg.smoke_tolerance + 0.1  # the banner batch: ~10.27
    assert abs(report.initial_loss - ln_v) < cfg.smoke_tolerance - 0.1  # real code: ~10.63
    assert (tmp_path / "run" / rundir.SMOKE_FILE).is_file()


# ------------------------------------------- the demo config on the demo's own real corpus

CONFIGS = REPO / "configs"
LOCAL = ["workers=1", "min_available_gb=0"]  # the same bytes with any worker count


def stage(name: str, config: str, **paths: Path) -> int:
    """`python -m pipeline <name> --config configs/<config> key=path ...`, in this process."""
    keys = [f"{k}={v}" for k, v in paths.items()]
    return main([name, "--config", str(CONFIGS / config), *keys, *LOCAL])


def build_demo_corpus(root: Path) -> None:
    """The shards `make demo` smokes on, built by its own stages and configs (~4 s):
    sample-data (8 MB of this machine's real code: Python's standard library and the
    installed packages, so Python, C, C++, Markdown, ...), near-dedup and tokenize."""
    sample, dedup, shards = root / "sample", root / "dedup", root / "shards"
    cfg = configlib.load(sample_data.CONFIG, CONFIGS / "sample-data.yaml", [f"output={sample}"])
    assert sample_data.run(cfg) == 0
    assert stage("dedup", "demo-dedup.yaml", input=sample, output=dedup) == 0
    assert (
        stage("tokenize", "demo-tokenize.yaml", input=sample, output=shards, near_dedup=dedup) == 0
    )


@pytest.fixture(scope="session")
def demo_corpus(shared: Shared) -> Path:
    """The demo's shards, built once per session (read-only: tests/conftest.py)."""
    return shared.get("demo-corpus", build_demo_corpus) / "shards"


def demo_config(data: Path, out_dir: Path, seed: int) -> TrainConfig:
    """configs/demo.yaml as the file has it (smoke_steps, smoke_tolerance: the defaults),
    but for the data, the run folder and the seed."""
    over = [f"data={data}", f"out_dir={out_dir}", f"seed={seed}"]
    return configlib.load(smoke.CONFIG, CONFIGS / "demo.yaml", over)


@pytest.mark.parametrize("seed", range(1, 9))
def test_the_demo_config_passes_smokes_initial_check_on_real_code_for_every_seed(
    demo_corpus: Path, tmp_path: Path, seed: int
) -> None:
    """Issue 19: `make smoke` on configs/demo.yaml passes whatever the seed. Measured on
    this corpus, seeds 1-8: 24 % of the targets repeat their input token; the checked mean
    (the others) is 10.84-10.88, the plain mean 10.56-10.67, ln(50304) 10.83. The rule is
    on the initial losses alone (made before any step), so each seed makes only those;
    the whole smoke, steps and all, runs once below."""
    cfg = demo_config(demo_corpus, tmp_path / "run", seed)
    initial, initial_all = smoke.initial_losses(cfg)
    ln_v = math.log(cfg.vocab_size)
    assert abs(initial - ln_v) <= cfg.smoke_tolerance / 2
    assert initial_all < initial  # repeats score below ln(vocab) at init
    assert not (tmp_path / "run" / "smoke").exists()


@pytest.mark.slow
def test_the_demo_config_passes_the_whole_smoke_on_real_code(
    demo_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make smoke`'s command on the demo's corpus: every check, the stamp, the same initial
    losses as the check alone makes."""
    run = tmp_path / "run"
    over = [f"data={demo_corpus}", f"out_dir={run}"]
    assert main(["smoke", "--config", str(CONFIGS / "demo.yaml"), *over]) == 0
    out = capsys.readouterr().out
    assert "smoke: ok ->" in out
    cfg = demo_config(demo_corpus, run, seed=1337)  # the config file's own seed
    stamp = json.loads((run / rundir.SMOKE_FILE).read_text())
    assert stamp["config_hash"] == rundir.smoke_fingerprint(cfg)
    initial, initial_all = smoke.initial_losses(cfg)
    assert f"initial val loss {initial:.4f} over" in out and f"({initial_all:.4f} over all)" in out
    assert abs(initial - math.log(cfg.vocab_size)) <= cfg.smoke_tolerance / 2


@pytest.mark.slow
def test_the_demo_config_still_refuses_a_broken_init_on_real_code(
    demo_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer, "GPT", LoudGPT)

    def no_step(*args: object, **kwargs: object) -> None:
        raise AssertionError("smoke took a step after a failed initial check")

    monkeypatch.setattr(trainer.Trainer, "train_step", no_step)  # it fails before any step
    cfg = demo_config(demo_corpus, tmp_path / "run", seed=1)
    with pytest.raises(CheckFailed, match=INITIAL.format(windows=20) + " smoke_tolerance=0.35"):
        smoke.run_smoke(cfg)
    assert not (tmp_path / "run" / rundir.SMOKE_FILE).exists()


def write_indented_code_shards(folder: Path) -> Path:
    """GPT-2 shards of the standard library's modules, each line indented two levels deeper
    (as code in a class in a namespace is): GPT-2 spells indentation as runs of one token,
    so most targets repeat their input."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        ids = np.array(
            tokenizer.get().encode("".join(" " * 8 + line for line in text.splitlines(True)))
        )
        if len(ids) > 1000 and (ids[1:] == ids[:-1]).mean() >= 0.5:
            docs.append([*ids[:6000].tolist(), tokenizer.EOT])
        if sum(map(len, docs)) >= 60_000:
            break
    ids = [t for d in docs for t in d]
    assert len(ids) >= 60_000, "too few deeply indented modules in this Python"
    write_shard(folder, "train", 0, np.array(ids[:40_000], dtype=np.uint16))
    write_shard(folder, "val", 0, np.array(ids[40_000:], dtype=np.uint16))
    manifest.write_for_shards(folder, gpt2_tokenizer_info())
    return folder


def test_a_corpus_of_deeply_indented_code_passes_though_its_plain_mean_is_out_of_band(
    tmp_path: Path,
) -> None:
    """What the plain mean over the eval set got wrong: on code whose targets repeat their
    input this often (54 % of the val targets), a sound fresh model scores below the band
    (plain means 10.19-10.45 for seeds 1-3, the floor 10.48: the old check refused it);
    the targets that do not repeat score 10.86. The check is on the initial losses, made
    before any step, so this makes only those (the whole smoke runs on the demo corpus)."""
    data = write_indented_code_shards(tmp_path / "shards")
    cfg = demo_config(data, tmp_path / "run", seed=1)
    initial, initial_all = smoke.initial_losses(cfg)  # CheckFailed if refused
    ln_v = math.log(cfg.vocab_size)
    assert initial_all < ln_v - cfg.smoke_tolerance  # the old check: refused
    assert abs(initial - ln_v) <= cfg.smoke_tolerance / 2
