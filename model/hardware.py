"""What a GPU can do: FLOPs per token, peak dense TFLOPS, MFU, and bf16 or not.

Model FLOPs utilisation (MFU, PaLM, Chowdhery et al. 2022, appendix B) is the
model FLOP/s a run achieves divided by the hardware's peak. The numerator
counts only the FLOPs the model needs (not recomputation, not the lean loss's
second head matmul), so MFU compares runs and hardware honestly.

The peak table gives NVIDIA's datasheet figure for **dense** tensor-core math
(no 2:4 sparsity: sheets that quote "with sparsity" are halved here), for
bf16/fp16 inputs with fp32 accumulation, which is what PyTorch's matmuls use.
On GeForce cards that is half the "FP16 accumulate" headline figure. For fp32
training the rate is the TF32 tensor rate (the runtime enables TF32), or None
where the card has no TF32 (T4, V100).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)


def flops_per_token(
    n_params_non_embedding: int, n_layer: int, n_embd: int, block_size: int
) -> float:
    """Training FLOPs per token: 6N + 12 * n_layer * n_embd * block_size.

    6N: each parameter does one multiply-add (2 FLOPs) per token in the forward
    pass and two in the backward pass (gradients of inputs and of weights):
    Kaplan et al. 2020, "Scaling laws for neural language models", section 2.1.
    12 L C T: the attention scores q k^T and the weighted sum over values, each
    2 * T * C FLOPs per token and layer forward, times 3 for forward + backward;
    PaLM (Chowdhery et al. 2022) appendix B. N excludes the position table but
    keeps the tied token embedding, because it is also the output head.
    For the 124M reference: 6 * 123,689,472 + 12 * 12 * 768 * 1024 = 855.4 MFLOP.
    """
    return 6.0 * n_params_non_embedding + 12.0 * n_layer * n_embd * block_size


# Ampere: bf16 (and TF32) tensor cores in hardware. torch.cuda.is_bf16_supported() says
# True on a T4 or V100 too (its including_emulation=True counts bf16 emulated in fp32),
# where bf16 matmuls run far below the fp16 tensor-core rate: the rule asks the card.
NATIVE_BF16 = (8, 0)


def native_bf16(capability: tuple[int, int]) -> bool:
    """Whether a card of CUDA compute capability `capability` has bf16 tensor cores."""
    return tuple(capability) >= NATIVE_BF16


def auto_dtype(device_type: str, capability: tuple[int, int] | None) -> str:
    """What `dtype: auto` means, the one rule for the trainer, the sampler and the planner.

    float32 on the CPU (its bf16 matmuls are slow on most CPUs); on a GPU bf16
    where the card has it natively (compute capability 8.0 and up), else float16
    with a GradScaler (T4 7.5, V100 7.0). `capability` None: a card the planner
    does not know, assumed recent (bf16).
    """
    if device_type != "cuda":
        return "float32"
    return "bfloat16" if capability is None or native_bf16(capability) else "float16"


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float, gpus: int = 1) -> float:
    """Achieved model FLOP/s over the peak, as a fraction (0.35 = 35 %), per GPU.

    `tokens_per_s` is the whole job's, made by `gpus` GPUs of `peak_tflops` each (under
    DDP every rank's tokens count), so the peak it is measured against is gpus x peak.
    """
    if peak_tflops <= 0:
        raise ValueError(f"peak_tflops must be > 0, got {peak_tflops}")
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    return tokens_per_s * flops_per_token / (gpus * peak_tflops * 1e12)


@dataclass(frozen=True)
class GpuSpec:
    pattern: str  # regex, fullmatch against the normalised device name
    capability: tuple[int, int]  # CUDA compute capability (torch.cuda.get_device_capability)
    half: float  # dense bf16/fp16 tensor TFLOPS, fp32 accumulate
    tf32: float | None  # dense TF32 tensor TFLOPS; None: no TF32 on this card
    source: str  # the datasheet the figures come from

    @property
    def bf16(self) -> bool:
        """bf16 tensor cores, by the one rule (they arrived with TF32, in Ampere)."""
        return native_bf16(self.capability)


# torch.cuda.get_device_name() strings, normalised by _normalise: "NVIDIA GeForce
# RTX 4070" -> "rtx 4070", "NVIDIA H100 80GB HBM3" -> "h100 80gb hbm3", "Tesla T4" -> "t4".
# fullmatch, so "rtx 4070 super" or a laptop part does not borrow a desktop figure.
GPUS: tuple[GpuSpec, ...] = (
    # Ada Lovelace GeForce: NVIDIA Ada GPU architecture whitepaper v2.1, appendix A,
    # "Peak FP16 Tensor TFLOPS with FP32 Accumulate" and "Peak TF32 Tensor TFLOPS", dense.
    GpuSpec(r"rtx 4090", (8, 9), 165.2, 82.6, "Ada whitepaper, RTX 4090"),
    GpuSpec(r"rtx 4080", (8, 9), 97.5, 48.7, "Ada whitepaper, RTX 4080"),
    GpuSpec(r"rtx 4070 ti", (8, 9), 80.2, 40.1, "Ada whitepaper, RTX 4070 Ti"),
    GpuSpec(r"rtx 4070", (8, 9), 58.3, 29.1, "Ada whitepaper, RTX 4070"),
    # Ampere GeForce: NVIDIA Ampere GA102 GPU architecture whitepaper, appendix A.
    GpuSpec(r"rtx 3090", (8, 6), 35.6, 35.6, "GA102 whitepaper, RTX 3090"),
    GpuSpec(r"rtx 3080", (8, 6), 29.8, 29.8, "GA102 whitepaper, RTX 3080"),
    # Data-centre parts: each product's datasheet, sparse figures halved.
    GpuSpec(r"a100[- ].*", (8, 0), 312.0, 156.0, "A100 datasheet (40/80 GB, SXM4 and PCIe)"),
    GpuSpec(r"h100 pcie", (9, 0), 756.5, 378.0, "H100 datasheet, PCIe (1513 / 756 sparse)"),
    GpuSpec(r"h100 nvl", (9, 0), 835.5, 417.5, "H100 NVL datasheet (1671 / 835 sparse)"),
    GpuSpec(
        r"h100( 80gb hbm3| sxm.*)?", (9, 0), 989.4, 494.7, "H100 datasheet, SXM (1979 / 989 sparse)"
    ),
    GpuSpec(r"h200 nvl", (9, 0), 835.5, 417.5, "H200 datasheet, NVL (1671 / 835 sparse)"),
    GpuSpec(r"h200( sxm.*)?", (9, 0), 989.4, 494.7, "H200 datasheet, SXM (1979 / 989 sparse)"),
    GpuSpec(r"l4", (8, 9), 121.0, 60.0, "L4 datasheet (242 / 120 sparse)"),
    GpuSpec(r"l40s", (8, 9), 362.05, 183.0, "L40S datasheet (733 / 366 sparse)"),
    # NVIDIA publishes no A10G sheet (it is AWS's A10 variant); 70 is the figure
    # AWS partners quote for its bf16 tensor rate. Set peak_tflops if you know better.
    GpuSpec(r"a10g", (8, 6), 70.0, 35.0, "AWS G5 (A10G) quoted figures"),
    # Turing and Volta: fp16 tensor cores only (no bf16, no TF32); bf16 runs fall
    # back to fp16 (`dtype: auto`), so the half rate is the fp16 one.
    GpuSpec(r"t4", (7, 5), 65.0, None, "T4 datasheet, mixed precision FP16/FP32"),
    GpuSpec(r"v100s-pcie.*", (7, 0), 130.0, None, "V100S datasheet, tensor performance"),
    GpuSpec(r"v100-pcie.*", (7, 0), 112.0, None, "V100 datasheet, PCIe tensor performance"),
    GpuSpec(r"v100-sxm.*", (7, 0), 125.0, None, "V100 datasheet, SXM2 tensor performance"),
)

_HALF = ("bfloat16", "float16", "bf16", "fp16")
_FULL = ("float32", "fp32", "tf32")


def _normalise(device_name: str) -> str:
    name = " ".join(device_name.lower().split())
    for prefix in ("nvidia ", "geforce ", "tesla "):
        name = name.removeprefix(prefix)
    return name


def find_gpu(device_name: str) -> GpuSpec | None:
    name = _normalise(device_name)
    for spec in GPUS:
        if re.fullmatch(spec.pattern, name):
            return spec
    return None


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """Dense peak TFLOPS of `device_name` for `dtype`; None when unknown (then set peak_tflops)."""
    if dtype not in _HALF + _FULL:
        raise ValueError(f"dtype must be one of {_HALF + _FULL}, got {dtype!r}")
    spec = find_gpu(device_name)
    if spec is None:
        log.warning(
            "peak TFLOPS of %r unknown: MFU and the time floor are left out; set "
            "peak_tflops=<dense bf16 TFLOPS from the datasheet> to get them",
            device_name,
        )
        return None
    if dtype in _HALF:
        return spec.half
    if spec.tf32 is None:
        log.warning("%s has no TF32 tensor cores: no fp32 peak; set peak_tflops", device_name)
    return spec.tf32
