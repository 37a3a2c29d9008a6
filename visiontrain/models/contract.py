"""The model contract: what the rest of the project may know about a model, in one small spec per model.

Config validation (model.width), fine-tuning (head swap, freezing), the optimizer's parameter groups
and zero-init read a `ModelSpec` instead of testing a model's class. A new architecture is one
`ModelSpec` in a family module (`resnets.py`, `cifar_fast.py`, ...) listed in `models/__init__.py`.

Besides the spec, a model may define `init_from_data(images)`: a data-dependent initialization
that `build_run` calls with normalized training images before training (cifar_fast's whitening).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from torch import nn


class ModelSettings(Protocol):
    """What a builder reads of the `model` config section (ModelConfig has these fields and more)."""

    name: str
    num_classes: int
    width: int
    zero_init_residual: bool
    bn_momentum: float
    bn_eps: float
    bn_scale: str
    conv_init: str


def _no_branches(model: nn.Module) -> list[nn.BatchNorm2d]:
    return []


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the value of model.name
    # the model config section -> a freshly initialised model on the CPU (no compile, no memory-format change)
    build: Callable[[ModelSettings], nn.Module]
    # model -> (stem modules, stages from input to output): what finetune.freeze=stages:K counts
    stem_and_stages: Callable[[nn.Module], tuple[list[nn.Module], list[nn.Module]]]
    input_size: int  # the resolution the architecture is designed for (32: CIFAR-sized, 224: ImageNet-sized)
    # The classifier's attribute path: fine-tuning replaces it, optim.backbone_lr_mult spares it.
    head: str = "fc"
    has_width: bool = False  # model.width scales the network (otherwise it must stay 64)
    # model -> the BatchNorm closing each residual branch: model.zero_init_residual zeroes their scale
    residual_branch_ends: Callable[[nn.Module], list[nn.BatchNorm2d]] = _no_branches

    def is_head(self, parameter_name: str) -> bool:
        return parameter_name.startswith(self.head + ".")
