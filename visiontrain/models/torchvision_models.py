"""`model.name=torchvision/<name>`: any torchvision classification model (`torchvision.models.list_models`),
built with `weights=None` (weights come only through finetune.init_from) and `num_classes=model.num_classes`,
plus `model.kwargs` (e.g. `stochastic_depth_prob`, `dropout`, `image_size` for ViT).

torchvision says less about its models than timm: the classifier is found as the layers whose output
width is the class count, stages and blocks from the module tree (block_depths.py), parameters owned
by no standard layer (class token, position embedding, layer scale) get no weight decay, and the
input contract is torchvision's ImageNet one (mean/std, 224 px, crop 0.875; Inception 299 px).
GoogLeNet and Inception v3 are built without auxiliary classifiers unless `model.kwargs.aux_logits` (their
tensors in torchvision's weight files are then dropped on load, as torchvision's own loader does).
"""

from __future__ import annotations

import difflib
import functools
from typing import Any

import torch
from torch import nn

from visiontrain.infra.errors import UsageError
from visiontrain.models.arguments import build_with_kwargs
from visiontrain.models.block_depths import depths_from_blocks, free_parameters
from visiontrain.models.contract import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSettings,
    ModelSpec,
    prefers_channels_last,
)

PREFIX = "torchvision/"
_PROBE_CLASSES = 1013  # a class count no hidden layer has: the layers with this output width are the head
_DEFAULTS = {"googlenet": {"aux_logits": False, "init_weights": True},
             "inception_v3": {"aux_logits": False, "init_weights": True}}
# Models of one image size (position embeddings, attention windows) and the keyword that sets it.
_SIZE_KEYWORD = {"vit_": "image_size", "maxvit_": "input_size"}
# Auxiliary classifiers, left out by default: a torchvision weights file's tensors for them are dropped on load.
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


@functools.lru_cache(maxsize=1)
def architectures() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_name(name: str) -> None:
    arch = name[len(PREFIX):]
    if arch not in architectures():
        close = difflib.get_close_matches(arch, architectures(), n=3, cutoff=0.6)
        raise UsageError(f"config key 'model.name' = {name!r} is invalid: torchvision has no classification model "
                         f"{arch!r}" + (f" (closest: {', '.join(close)})" if close else ""))


def _create(arch: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes,
                                        **{**_DEFAULTS.get(arch, {}), **kwargs})


def _on_meta(arch: str, num_classes: int) -> nn.Module:
    try:
        with torch.device("meta"):
            return _create(arch, num_classes, {})
    except (NotImplementedError, RuntimeError):  # a builder that computes from tensor values (RegNet)
        return _create(arch, num_classes, {})


def _stated_min_size(arch: str) -> int:
    import torchvision

    try:
        weights = list(torchvision.models.get_model_weights(arch))
    except ValueError:  # an architecture without published weights states nothing
        return 1
    return max(weights[0].meta.get("min_size", (1, 1))) if weights else 1


@functools.cache
def _probe(arch: str) -> tuple[tuple[str, ...], bool]:
    """(the layers that output the class count, whether NHWC helps)."""
    model = _on_meta(arch, _PROBE_CLASSES)
    heads = tuple(name for name, module in model.named_modules()
                  if (isinstance(module, nn.Linear) and module.out_features == _PROBE_CLASSES)
                  or (isinstance(module, nn.Conv2d) and module.out_channels == _PROBE_CLASSES))
    return heads, prefers_channels_last(model)


def spec(name: str) -> ModelSpec:
    check_name(name)
    arch = name[len(PREFIX):]
    heads, channels_last = _probe(arch)

    def build(settings: ModelSettings) -> nn.Module:
        return build_with_kwargs(name, lambda **kw: _create(arch, settings.num_classes, kw), dict(settings.kwargs),
                                 lambda: _on_meta(arch, settings.num_classes))

    size = 299 if arch == "inception_v3" else 224
    # torchvision states a minimum per weights; for ViT and Swin it is their weights' resolution, not a
    # limit of the architecture (ViT is rebuilt for a size by its size keyword, Swin pads its windows).
    minimum = 1 if arch.startswith(("vit_", "swin_")) else _stated_min_size(arch)
    return ModelSpec(
        name, build, depths=lambda model, fine: depths_from_blocks(model, heads, fine), input_size=size, heads=heads,
        takes_kwargs=True, no_weight_decay=free_parameters, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_ratio=0.875,
        fixed_input_size=any(arch.startswith(prefix) for prefix in _SIZE_KEYWORD),
        size_keyword=next((key for prefix, key in _SIZE_KEYWORD.items() if arch.startswith(prefix)), ""),
        min_input_size=minimum, channels_last=channels_last, extra={"family": "torchvision"})
