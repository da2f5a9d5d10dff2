"""`python -m pipeline plan`: the table, the JSON, the story's numbers, the measured ETA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from model.runtime import resolve_precision
from pipeline.__main__ import REPO_ROOT, main
from tests.model.train_fixtures import tiny_config

RTX_4070 = "gpu=NVIDIA GeForce RTX 4070"
KEYS = (
    "params",
    "peak_train_bytes",
    "peak_eval_bytes",
    "max_micro_batch",
    "grad_accum",
    "flops_per_token",
    "peak_tflops",
    "floor_hours",
)


def _plan(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["plan", "gpu_gb=12", RTX_4070, "format=json", *args]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_json_keys_and_the_table_agree(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = f"out_dir={tmp_path}"
    p = _plan(capsys, run)
    for key in KEYS:
        assert p[key] is not None, key
    assert p["params"] == 124_475_904
    assert p["max_micro_batch"] * p["grad_accum"] == 32  # 4 x 8 of the config
    assert main(["plan", "gpu_gb=12", RTX_4070, run]) == 0
    table = capsys.readouterr().out
    assert f"largest micro-batch that fits: {p['max_micro_batch']} " in table
    assert f"(grad_accum {p['grad_accum']}," in table
    assert f"{p['peak_train_bytes'] / 2**30:.2f}" in table
    assert f"{p['peak_eval_bytes'] / 2**30:.2f}" in table
    assert f"{p['floor_hours']:,.1f} h" in table
    assert f"{p['flops_per_token'] / 1e6:,.1f} M" in table


def test_story_floor_and_the_12_gb_card(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = f"out_dir={tmp_path}"
    p = _plan(capsys, run)
    assert p["peak_tflops"] == pytest.approx(58.3)
    assert p["total_tokens"] == pytest.approx(14.0e9, rel=0.01)
    assert p["floor_hours"] == pytest.approx(57, abs=1.5)
    assert p["expected_hours"] == pytest.approx(p["floor_hours"] / 0.35)
    # the reference config says micro_batch: auto: the planner fits 16 on the 12 GB card
    assert p["fits"] and p["micro_batch"] == 16 == p["max_micro_batch"]
    # the story's run: nanoGPT's full-logits loss and AdamW at micro-batch 8 on 12 GB
    story = (run, "loss=plain", "optimizer=adamw", "micro_batch=8", "grad_accum=4")
    plain8 = _plan(capsys, *story, "activation_checkpointing=none")
    assert not plain8["fits"]
    # activation checkpointing's auto rule rescues it: a fixed 8 fits only with it
    rescued = _plan(capsys, *story)
    assert rescued["fits"] and rescued["activation_checkpointing"] == "full"
    assert plain8["eval_largest_tensor_bytes"] / 2**30 == pytest.approx(1.54, abs=0.01)
    lean8 = _plan(capsys, run, "micro_batch=8", "grad_accum=4")
    assert lean8["fits"] and lean8["max_micro_batch"] >= 8


def test_auto_shows_the_largest_fitting_size(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    p = _plan(capsys, f"out_dir={tmp_path}", "micro_batch=auto", "batch_size=64")
    assert p["micro_batch"] == p["max_micro_batch"] and p["fits"]
    assert p["sequences_per_step"] == 64 == p["max_micro_batch"] * p["grad_accum"]
    sweep = {s["micro_batch"]: s for s in p["sweep"]}
    assert sweep[p["max_micro_batch"]]["fits"]
    assert not sweep[2 * p["max_micro_batch"]]["fits"]


def test_measured_eta_from_smoke_then_metrics(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run = f"out_dir={tmp_path}"
    assert _plan(capsys, run)["eta_hours"] is None
    (tmp_path / "smoke.ok").write_text(json.dumps({"ms_per_step": 900.0}), encoding="utf-8")
    p = _plan(capsys, run)
    assert p["measured_ms_per_step"] == 900.0
    assert p["eta_hours"] == pytest.approx(427_000 * 0.9 / 3600)
    lines = [{"step": 0, "val_loss": 10.9}, {"step": 1000, "loss": 3.0, "ms": 720.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    p = _plan(capsys, run)
    assert p["measured_from"].endswith("metrics.jsonl")
    assert p["eta_hours"] == pytest.approx(426_000 * 0.72 / 3600)


def test_the_loss_key_is_train_configs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """One `loss` key for train, smoke and plan (TrainConfig's, not redefined); each loss's
    plan at micro-batch 8: fused below lean, both far below plain, and the table names it."""
    from model.train_config import TrainConfig
    from pipeline.plan import PlanConfig

    assert "loss" not in PlanConfig.__annotations__ and "loss" in TrainConfig.__annotations__
    assert PlanConfig().loss == TrainConfig().loss == "fused"
    run = f"out_dir={tmp_path}"
    plans = {
        loss: _plan(capsys, run, f"loss={loss}", "micro_batch=8", "grad_accum=4")
        for loss in ("fused", "lean", "plain")
    }
    assert [p["loss"] for p in plans.values()] == ["fused", "lean", "plain"]
    train = {loss: p["peak_train_bytes"] for loss, p in plans.items()}
    assert train["fused"] < train["lean"] < train["plain"]
    assert main(["plan", "gpu_gb=12", RTX_4070, run, "loss=fused"]) == 0
    table = capsys.readouterr().out
    assert "fused loss" in table and "loss peak beyond what it keeps (fused, in forward)" in table


def test_unknown_gpu_has_no_peak(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = _plan(capsys, f"out_dir={tmp_path}", "gpu=Some Future GPU")
    assert p["peak_tflops"] is None and p["floor_hours"] is None
    p = _plan(capsys, f"out_dir={tmp_path}", "gpu=Some Future GPU", "peak_tflops=100")
    assert p["peak_tflops"] == 100 and p["floor_hours"] is not None


def test_exact_mode_traces_a_tiny_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    tiny = ["n_layer=2", "n_head=2", "n_embd=64", "block_size=64", "vocab_size=512"]
    p = _plan(capsys, f"out_dir={tmp_path}", "exact=true", *tiny)
    for key in ("peak_train_bytes", "peak_eval_bytes"):
        assert abs(p["exact"][key] - p[key]) <= 0.10 * p["exact"][key]


def test_bad_keys_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "gpu_gb=12", "format=xml", "loss=huge"]) == 2
    err = capsys.readouterr().err.strip()
    assert "format='xml'" in err and "loss='huge'" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cli_without_gpu_gb_on_cpu_says_what_to_pass() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "plan", "--config", "configs/gpt2-124m.yaml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "gpu_gb=12" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_present_gpu_is_the_default(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["plan", "format=json", f"out_dir={tmp_path}"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["gpu_bytes"] == torch.cuda.mem_get_info()[1]
    assert p["gpu"] == torch.cuda.get_device_name()


@pytest.mark.parametrize(
    ("name", "capability", "dtype"),
    [
        ("Tesla V100-SXM2-16GB", (7, 0), "float16"),
        ("Tesla T4", (7, 5), "float16"),
        ("NVIDIA A100-SXM4-80GB", (8, 0), "bfloat16"),
        ("NVIDIA GeForce RTX 3090", (8, 6), "bfloat16"),
        ("NVIDIA GeForce RTX 4070", (8, 9), "bfloat16"),
        ("NVIDIA H100 80GB HBM3", (9, 0), "bfloat16"),
    ],
)
def test_dtype_auto_is_the_same_in_the_planner_and_the_runtime(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    capability: tuple[int, int],
    dtype: str,
) -> None:
    """The plan for a named card and the trainer on that card pick the same `auto` dtype:
    fp16 on Volta and Turing, though torch says bf16 is supported there (by emulation)."""
    assert main(["plan", "gpu_gb=16", f"gpu={name}", "format=json"]) == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == dtype
    # the card, as torch describes it to the runtime (no GPU here)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    cfg = tiny_config(Path("x"), Path("y"), dtype="auto", device="cuda")
    assert resolve_precision(cfg, torch.device("cuda", 0)).name == dtype


def test_the_disk_the_checkpoints_need(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = _plan(capsys, f"out_dir={tmp_path}", "keep_ckpts=3", "optimizer=adamw")
    assert p["checkpoints_disk_bytes"] == 4 * p["checkpoint_bytes"]  # 3 kept + 1 being written
    assert p["checkpoint_bytes"] == pytest.approx(12 * p["params"], rel=0.01)  # 4 P + AdamW's 8 P
    muon = _plan(capsys, f"out_dir={tmp_path}", "keep_ckpts=3", "optimizer=muon")
    blocks = 12 * 12 * 768**2  # the 12 layers' matrices: one momentum buffer, not two moments
    assert muon["checkpoint_bytes"] == pytest.approx(p["checkpoint_bytes"] - 4 * blocks, rel=0.001)
    assert p["disk_free_bytes"] > 0
    assert main(["plan", "gpu_gb=12", RTX_4070, f"out_dir={tmp_path}"]) == 0
    assert "keep_ckpts 3 + the one being written" in capsys.readouterr().out


def test_the_plan_shows_activation_checkpointing_and_its_choice(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """350M on a 12 GB card: 4 fit without recomputing, so auto recomputes and fits 8 or
    more (issue 20's goal); 124M fits 16 without and does not recompute."""
    big = _plan(capsys, "--config", "configs/gpt2-350m.yaml", f"out_dir={tmp_path}")
    assert big["activation_checkpointing"] == "full" and big["max_micro_batch"] >= 8
    assert big["max_micro_batch_without_ac"] == 4
    for row in big["sweep"]:
        assert row["ac_required_bytes"] < row["required_bytes"]
    small = _plan(capsys, "--config", "configs/gpt2-124m.yaml", f"out_dir={tmp_path}")
    assert small["activation_checkpointing"] == "none" and small["max_micro_batch"] == 16
    forced = _plan(
        capsys,
        "--config",
        "configs/gpt2-124m.yaml",
        f"out_dir={tmp_path}",
        "activation_checkpointing=full",
    )
    assert forced["activation_checkpointing"] == "full" and forced["max_micro_batch"] == 32
