"""The model registry: every `model.name` and its `ModelSpec` (the contract, contract.py).

The project's own networks: resnets.py (torchvision ResNets with the ImageNet stem, the CIFAR-stem ResNet-18,
ResNet-9) and cifar_fast.py (the fast CIFAR-10 network); add one as a `ModelSpec` listed in its module's SPECS.
Library families: `timm/<arch>[.<tag>]` (timm_models.py) and `torchvision/<name>` (torchvision_models.py),
any architecture those libraries have, with `model.kwargs` passed to it (docs/models.md).
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from visiontrain.infra.errors import UsageError
from visiontrain.models import cifar_fast, resnets, timm_models, torchvision_models
from visiontrain.models.contract import ModelSettings, ModelSpec
from visiontrain.models.layer_settings import apply_layer_settings

SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (*resnets.SPECS, *cifar_fast.SPECS)}
MODEL_NAMES: tuple[str, ...] = tuple(SPECS)
MODELS_WITH_WIDTH: tuple[str, ...] = tuple(name for name, spec in SPECS.items() if spec.has_width)
FAMILIES = {timm_models.PREFIX: timm_models, torchvision_models.PREFIX: torchvision_models}
ALLOWED = f"{', '.join(MODEL_NAMES)}, timm/<arch>[.<tag>], torchvision/<name>"


def family_of(name: str):
    return next((module for prefix, module in FAMILIES.items() if name.startswith(prefix)), None)


def check_model_name(name: str) -> None:
    """A one-line usage error (with the closest names) unless `name` is a model this project can build."""
    family = family_of(name)
    if family is not None:
        family.check_name(name)
    elif name not in SPECS:
        import difflib

        close = difflib.get_close_matches(name, MODEL_NAMES, n=1, cutoff=0.5)
        raise UsageError(f"config key 'model.name' = {name!r} is invalid: allowed {ALLOWED}"
                         + (f" (did you mean '{close[0]}'?)" if close else ""))


@functools.cache
def spec_of(name: str) -> ModelSpec:
    """The spec of `model.name` (config validation has already refused unknown names)."""
    family = family_of(name)
    return family.spec(name) if family is not None else SPECS[name]


def input_size_of(name: str, kwargs: dict[str, Any]) -> int:
    """The image size the built model takes: its size keyword in model.kwargs (img_size in timm, image_size or
    input_size in torchvision), else the architecture's own."""
    keyword = spec_of(name).size_keyword
    size = kwargs.get(keyword) if keyword else None
    if isinstance(size, (list, tuple)):
        size = size[-1]
    return int(size) if size is not None else spec_of(name).input_size


def build_model(cfg: ModelSettings) -> nn.Module:
    """A freshly initialised model (no compile, no memory-format change, on the CPU)."""
    spec = spec_of(cfg.name)
    kwargs = dict(getattr(cfg, "kwargs", None) or {})
    if kwargs and not spec.takes_kwargs:
        raise UsageError(f"config key 'model.kwargs' = {kwargs} is invalid: {cfg.name} takes none "
                         f"(model.kwargs pass to timm/ and torchvision/ architectures)")
    model = spec.build(cfg)
    if cfg.zero_init_residual:
        # Each residual block starts as the identity: trains deep nets stably at large batch.
        branch_ends = spec.residual_branch_ends(model)
        if not branch_ends and spec.takes_kwargs:
            own = ("model.kwargs.zero_init_last=true" if cfg.name.startswith("timm/")
                   else "model.kwargs.zero_init_residual=true")
            raise UsageError(f"config key 'model.zero_init_residual' is invalid for {cfg.name}: only the project's "
                             f"ResNets name their residual branches here; this architecture's own switch, where it "
                             f"has one: {own}")
        for bn in branch_ends:
            nn.init.zeros_(bn.weight)
    apply_layer_settings(model, cfg, keeps_own_bn=spec.takes_kwargs)
    return model
