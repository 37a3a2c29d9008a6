"""The model contract: what the rest of the project may know about a model, in one small spec per model.

Config validation (model.width, model.kwargs), fine-tuning (head swap, freezing), the optimizer's parameter
groups (head, layer-wise lr decay, no-decay parameters), zero-init and the input contract read a
`ModelSpec` instead of testing a model's class. The project's own networks have one `ModelSpec` each in
a family module (`resnets.py`, `cifar_fast.py`); `timm/<arch>` and `torchvision/<name>` get theirs from
`timm_models.py` and `torchvision_models.py`, built from what those libraries say about the architecture.

Besides the spec, a model may define `init_from_data(images)`: a data-dependent initialization
that `build_run` calls with normalized training images before training (cifar_fast's whitening).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelSettings(Protocol):
    """What a builder reads of the `model` config section (ModelConfig has these fields and more)."""

    name: str
    num_classes: int
    width: int
    kwargs: dict[str, Any]
    zero_init_residual: bool
    bn_momentum: float
    bn_eps: float
    bn_scale: str
    conv_init: str


class Depths(NamedTuple):
    """Where each parameter outside the head sits: 0 the stem, 1..stages the stages (or blocks), stages + 1
    what follows the last one (a final norm)."""

    of: dict[str, int]
    stages: int


def _no_branches(model: nn.Module) -> list[nn.BatchNorm2d]:
    return []


def _nothing(model: nn.Module) -> set[str]:
    return set()


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the value of model.name
    # the model config section -> a freshly initialised model on the CPU (no compile, no memory-format change)
    build: Callable[[ModelSettings], nn.Module]
    # (model, fine) -> the depth of every parameter outside the head: 0 for the stem, 1..S for the stages
    # from input to output (fine=False: what finetune.freeze=stages:K counts), or for the blocks (fine=True:
    # the layers of optim.layer_decay), S + 1 for what follows the last one (a final norm).
    depths: Callable[[nn.Module, bool], Depths]
    input_size: int  # the resolution the architecture is designed for (32: CIFAR-sized, 224: ImageNet-sized)
    # The classifier's attribute paths: fine-tuning replaces them, optim.backbone_lr_mult spares them.
    heads: tuple[str, ...] = ("fc",)
    has_width: bool = False  # model.width scales the network (otherwise it must stay 64)
    takes_kwargs: bool = False  # model.kwargs pass to the architecture (timm/ and torchvision/ models)
    # model -> the BatchNorm closing each residual branch: model.zero_init_residual zeroes their scale
    residual_branch_ends: Callable[[nn.Module], list[nn.BatchNorm2d]] = _no_branches
    # model -> parameter names that get no weight decay whatever their shape (position embeddings, class tokens)
    no_weight_decay: Callable[[nn.Module], set[str]] = _nothing
    # The input the architecture's published weights expect (timm's pretrained config); None: the data's own.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    crop_ratio: float | None = None
    # The model takes only model_input_size (ViT and Swin without dynamic_img_size): progressive
    # resizing is refused, and data.image_size must match it.
    fixed_input_size: bool = False
    size_keyword: str = ""  # the model.kwargs key that builds the model for another image size, if any
    # The smallest image the architecture takes (Inception v3: 75 px; MaxViT: 224, its windows' multiple):
    # smaller sizes are refused at config time, before a layer fails inside the model.
    min_input_size: int = 1
    channels_last: bool = True  # model.channels_last left empty: NHWC (see prefers_channels_last)
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific facts (reported, not relied on)

    def is_head(self, parameter_name: str) -> bool:
        return any(parameter_name.startswith(head + ".") for head in self.heads)


def prefers_channels_last(model: nn.Module) -> bool:
    """Whether NHWC memory helps: it speeds up convolutions (cuDNN's tensor-core kernels are NHWC), and a
    transformer whose one convolution is its patch embedding (ViT, DeiT, Swin, Mixer) gains nothing from it,
    as timm's own benchmarks show; such models then pay for the layout changes around it."""
    return sum(isinstance(module, nn.Conv2d) for module in model.modules()) > 1


def depths_from_modules(model: nn.Module, stem: list[nn.Module], stages: list[nn.Module],
                        heads: tuple[str, ...]) -> Depths:
    """Depths when the stem and the stages are known modules: stem 0, stage i i + 1, any other non-head
    parameter (a final norm) S + 1."""
    depth_of_param = {id(p): 0 for module in stem for p in module.parameters()}
    for index, stage in enumerate(stages, start=1):
        depth_of_param.update({id(p): index for p in stage.parameters()})
    return Depths({name: depth_of_param.get(id(p), len(stages) + 1) for name, p in model.named_parameters()
                   if not any(name.startswith(head + ".") for head in heads)}, len(stages))
