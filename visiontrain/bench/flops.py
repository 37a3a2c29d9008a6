"""FLOPs per training image and model FLOPs utilization (MFU).

FLOPs are counted with `torch.utils.flop_counter` on one forward pass (convolutions and
matrix products, 2 FLOPs per multiply-add); a training step costs 3x the forward pass
(the backward pass computes gradients of both activations and weights). MFU is the
model FLOPs achieved per second on one device over that device's dense peak rate for
the precision the matrix units run at.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

TRAIN_FLOPS_PER_FORWARD = 3

# Dense peak TFLOP/s per device (no sparsity), from the vendors' datasheets. The first
# key that occurs in torch.cuda.get_device_name() wins, so specific names come first.
# Override with --peak-tflops for a GPU that is missing or clocked differently.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100 NVL": {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0},  # SXM
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0},
    "GH200": {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "A800": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "A10G": {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2},
    "A10": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "RTX 4090": {"bf16": 165.0, "fp16": 165.0, "tf32": 82.6, "fp32": 82.6},
    "V100": {"fp16": 125.0, "fp32": 15.7},
}


def forward_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass of `model` on `example` (eval mode, no autograd)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def train_flops_per_image(model: nn.Module, image_size: int, device: torch.device,
                          memory_format: torch.memory_format = torch.contiguous_format) -> int:
    example = torch.randn(2, 3, image_size, image_size, device=device).contiguous(memory_format=memory_format)
    return TRAIN_FLOPS_PER_FORWARD * forward_flops(model, example) // 2


def matrix_precision(precision: str) -> str:
    """The rate the matrix units run at: fp32 convolutions use TF32 when cuDNN allows it (PyTorch's default)."""
    if precision != "fp32":
        return precision
    return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"


def peak_tflops(device_name: str | None, precision: str) -> float | None:
    """Dense peak of a known GPU at `precision` (bf16|fp16|fp32); None for a CPU or an unknown GPU."""
    if not device_name:
        return None
    rate = matrix_precision(precision)
    for key, peaks in PEAK_TFLOPS.items():
        if key in device_name:
            return peaks.get(rate)
    return None


def mfu(images_per_s_per_device: float, flops_per_image: float, peak: float | None) -> float | None:
    """Achieved model FLOP/s over the peak (both per device); None without a peak."""
    if not peak:
        return None
    return images_per_s_per_device * flops_per_image / (peak * 1e12)
