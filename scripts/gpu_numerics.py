"""Numerics of the fast paths on a CUDA device.

    python scripts/gpu_numerics.py

For the CIFAR ResNet-18 and ResNet-50 (zero-initialized residual BNs, as for training),
one training-mode forward and backward pass on fresh random inputs, in: fp32 (cuDNN's
TF32 convolutions, PyTorch's default), bf16 autocast with channels-last, and the same
compiled. Printed per variant: relative error ||x - ref|| / ||ref|| of the logits and of
all parameter gradients against a float64 run, and whether the activations stayed
channels-last. Checked (exit code 1 otherwise): everything finite, channels-last kept
where asked, and the compiled model computing what the eager one does (its difference
from eager bf16 under the bf16 error itself). Whether the precisions train equally well
is a training question: scripts/gpu_check.sh compares their accuracies.
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from visiontrain.config import ModelConfig  # noqa: E402
from visiontrain.models import build_model  # noqa: E402


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm()).item()


def run(model, images, labels, precision: str, channels_last: bool, probe: bool = True):
    model.zero_grad(set_to_none=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = images.to(dtype=next(model.parameters()).dtype).contiguous(memory_format=fmt)
    seen = {}
    if probe:  # the first convolution's output layout (not inside a compiled graph)
        first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))

        def probe_layout(_module, _inputs, out) -> None:  # a hook that returns None leaves the output alone
            seen["cl"] = out.is_contiguous(memory_format=torch.channels_last)

        hook = first_conv.register_forward_hook(probe_layout)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(x)
    if probe:
        hook.remove()
    F.cross_entropy(logits.double(), labels).backward()
    grads = torch.cat([p.grad.double().flatten() for p in model.parameters()])
    return logits.detach().double(), grads, seen.get("cl")


def check(name: str, num_classes: int, size: int, batch: int) -> bool:
    torch.manual_seed(0)
    base = build_model(ModelConfig(name=name, num_classes=num_classes, zero_init_residual=True)).cuda()
    images = torch.randn(batch, 3, size, size, device="cuda")
    labels = torch.randint(num_classes, (batch,), device="cuda")
    ref_logits, ref_grads, _ = run(copy.deepcopy(base).double(), images.double(), labels, "fp32", False)
    variants = {
        "fp32": (copy.deepcopy(base), "fp32", False),
        "bf16+cl": (copy.deepcopy(base).to(memory_format=torch.channels_last), "bf16", True),
        "bf16+cl+compile": (torch.compile(copy.deepcopy(base).to(memory_format=torch.channels_last)), "bf16", True),
    }
    ok, outputs = True, {}
    for variant, (model, precision, channels_last) in variants.items():
        logits, grads, stayed_cl = run(model, images, labels, precision, channels_last,
                                       probe="compile" not in variant)
        outputs[variant] = logits
        errors = rel(logits, ref_logits), rel(grads, ref_grads)
        good = bool(torch.isfinite(logits).all() and torch.isfinite(grads).all())
        good &= stayed_cl is None or stayed_cl == channels_last
        if variant == "bf16+cl+compile":  # compiled vs eager: closer than bf16 is to float64
            good &= rel(logits, outputs["bf16+cl"]) < rel(outputs["bf16+cl"], ref_logits)
        ok &= good
        print(f"{name:15s} {variant:16s} logits {errors[0]:.2e}  grads {errors[1]:.2e}  "
              f"channels-last activations: {stayed_cl}  {'ok' if good else 'FAIL'}", flush=True)
    print(f"{name:15s} compiled vs eager bf16 logits {rel(outputs['bf16+cl+compile'], outputs['bf16+cl']):.2e}")
    return ok


def main() -> int:
    if not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}")
    ok = check("cifar_resnet18", 10, 32, 128) & check("resnet50", 1000, 224, 32)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
