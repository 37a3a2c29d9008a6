"""The model registry: every `model.name` and its `ModelSpec` (the contract, contract.py).

Families: resnets.py (torchvision ResNets with the ImageNet stem, the CIFAR-stem ResNet-18, ResNet-9)
and cifar_fast.py (the fast CIFAR-10 network). Add a model: a `ModelSpec` in a family module, listed
in that module's SPECS.
"""

from __future__ import annotations

from torch import nn

from visiontrain.models import cifar_fast, resnets
from visiontrain.models.contract import ModelSettings, ModelSpec
from visiontrain.models.layer_settings import apply_layer_settings

SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (*resnets.SPECS, *cifar_fast.SPECS)}
MODEL_NAMES: tuple[str, ...] = tuple(SPECS)
MODELS_WITH_WIDTH: tuple[str, ...] = tuple(name for name, spec in SPECS.items() if spec.has_width)


def spec_of(name: str) -> ModelSpec:
    """The spec of `model.name` (config validation has already refused unknown names)."""
    return SPECS[name]


def build_model(cfg: ModelSettings) -> nn.Module:
    """A freshly initialised model (no compile, no memory-format change, on the CPU)."""
    spec = spec_of(cfg.name)
    model = spec.build(cfg)
    if cfg.zero_init_residual:
        # Each residual block starts as the identity: trains deep nets stably at large batch.
        for bn in spec.residual_branch_ends(model):
            nn.init.zeros_(bn.weight)
    apply_layer_settings(model, cfg)
    return model
