"""FLOPs per token, the peak table and MFU (model/hardware.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from model import hardware
from model.gpt import GPT, GPTConfig

STORY_TOKENS = 427_000 * 4 * 8 * 1024  # max_iters x tokens per step, ~14 B


def test_flops_per_token_124m() -> None:
    with torch.device("meta"):
        n = GPT(GPTConfig()).num_params(non_embedding=True)
    fpt = hardware.flops_per_token(n, 12, 768, 1024)
    assert fpt == 6 * 123_689_472 + 12 * 12 * 768 * 1024
    assert fpt == pytest.approx(855.4e6, rel=1e-3)


def test_story_floor_about_57_hours_on_a_4070() -> None:
    peak = hardware.peak_tflops("NVIDIA GeForce RTX 4070", "bfloat16")
    assert peak == pytest.approx(58.3)
    fpt = hardware.flops_per_token(123_689_472, 12, 768, 1024)
    hours = STORY_TOKENS * fpt / (peak * 1e12) / 3600
    assert 55 < hours < 59


@pytest.mark.parametrize(
    ("name", "half", "tf32"),
    [
        ("NVIDIA GeForce RTX 4070", 58.3, 29.1),
        ("NVIDIA GeForce RTX 4070 Ti", 80.2, 40.1),
        ("NVIDIA GeForce RTX 4080", 97.5, 48.7),
        ("NVIDIA GeForce RTX 4090", 165.2, 82.6),
        ("NVIDIA GeForce RTX 3090", 35.6, 35.6),
        ("NVIDIA GeForce RTX 3080", 29.8, 29.8),
        ("NVIDIA A100-SXM4-40GB", 312.0, 156.0),
        ("NVIDIA A100-SXM4-80GB", 312.0, 156.0),
        ("NVIDIA A100-PCIE-40GB", 312.0, 156.0),
        ("NVIDIA A100 80GB PCIe", 312.0, 156.0),
        ("NVIDIA H100 80GB HBM3", 989.4, 494.7),
        ("NVIDIA H100 PCIe", 756.5, 378.0),
        ("NVIDIA H100 NVL", 835.5, 417.5),
        ("NVIDIA H200", 989.4, 494.7),
        ("NVIDIA L4", 121.0, 60.0),
        ("NVIDIA L40S", 362.05, 183.0),
        ("NVIDIA A10G", 70.0, 35.0),
        ("Tesla T4", 65.0, None),
        ("Tesla V100-SXM2-16GB", 125.0, None),
        ("Tesla V100-PCIE-32GB", 112.0, None),
    ],
)
def test_peak_table(name: str, half: float, tf32: float | None) -> None:
    assert hardware.peak_tflops(name, "bfloat16") == half
    assert hardware.peak_tflops(name, "float16") == half
    assert hardware.peak_tflops(name, "float32") == tf32


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA GeForce RTX 4070 SUPER",
        "NVIDIA GeForce RTX 4090 Laptop GPU",
        "AMD Instinct MI300X",
        "cpu",
    ],
)
def test_unknown_gpu_is_none_and_says_what_to_set(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="model.hardware"):
        assert hardware.peak_tflops(name, "bfloat16") is None
    assert "peak_tflops" in caplog.text


def test_mfu_is_a_fraction() -> None:
    # 20,000 tok/s x 855.4 MFLOP = 17.1 TFLOP/s on a 58.3 TFLOPS card = 29.3 %
    assert hardware.mfu(20_000, 855.4e6, 58.3) == pytest.approx(0.2934, abs=1e-4)
    # the same job's rate from two such cards: each is half as busy
    assert hardware.mfu(20_000, 855.4e6, 58.3, gpus=2) == pytest.approx(0.1467, abs=1e-4)
    with pytest.raises(ValueError):
        hardware.mfu(1.0, 1.0, 1.0, gpus=0)
    with pytest.raises(ValueError):
        hardware.mfu(1.0, 1.0, 0.0)
    with pytest.raises(ValueError):
        hardware.peak_tflops("NVIDIA L4", "int8")


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [
        ((7, 0), "float16"),  # V100
        ((7, 5), "float16"),  # T4
        ((8, 0), "bfloat16"),  # A100
        ((8, 6), "bfloat16"),  # RTX 3090, A10G
        ((8, 9), "bfloat16"),  # RTX 4070, L4
        ((9, 0), "bfloat16"),  # H100, H200
        ((10, 0), "bfloat16"),  # Blackwell
        (None, "bfloat16"),  # a card the planner does not know: assumed recent
    ],
)
def test_dtype_auto_is_bf16_only_on_cards_that_have_it_natively(
    capability: tuple[int, int] | None, dtype: str
) -> None:
    assert hardware.auto_dtype("cuda", capability) == dtype
    assert hardware.auto_dtype("cpu", capability) == "float32"


@pytest.mark.parametrize(
    ("name", "capability"),
    [
        ("Tesla V100-SXM2-16GB", (7, 0)),
        ("Tesla T4", (7, 5)),
        ("NVIDIA A100-SXM4-80GB", (8, 0)),
        ("NVIDIA GeForce RTX 3090", (8, 6)),
        ("NVIDIA A10G", (8, 6)),
        ("NVIDIA GeForce RTX 4070", (8, 9)),
        ("NVIDIA L4", (8, 9)),
        ("NVIDIA H100 80GB HBM3", (9, 0)),
        ("NVIDIA H200", (9, 0)),
    ],
)
def test_the_table_knows_each_cards_capability(name: str, capability: tuple[int, int]) -> None:
    spec = hardware.find_gpu(name)
    assert spec is not None and spec.capability == capability
    assert spec.bf16 is hardware.native_bf16(capability) is (spec.tf32 is not None)


def test_dtype_auto_on_the_cpu_is_float32() -> None:
    from model.runtime import resolve_precision
    from tests.model.train_fixtures import tiny_config

    cfg = tiny_config(Path("x"), Path("y"), dtype="auto")
    assert resolve_precision(cfg, torch.device("cpu")).name == "float32"
