"""`model.name=timm/<arch>` (or `timm/<arch>.<tag>`, the tag choosing the published weights' input contract):
any timm architecture, built with `pretrained=False` (weights come only through finetune.init_from, read
from local files) and `num_classes=model.num_classes`, plus `model.kwargs` (drop_path_rate, img_size, ...).

The spec comes from what timm says about the architecture: its pretrained config (classifier name, mean,
std, crop, input size, whether the size is fixed), its `group_matcher` (stem and stages for
finetune.freeze, blocks for optim.layer_decay: the groups timm's own layer decay uses) and its
`no_weight_decay()` list (position embeddings, class tokens).
"""

from __future__ import annotations

import difflib
import functools
import logging
from typing import Any

import torch
from torch import nn

from visiontrain.infra.errors import UsageError
from visiontrain.models.arguments import build_with_kwargs
from visiontrain.models.block_depths import depths_from_blocks
from visiontrain.models.contract import Depths, ModelSettings, ModelSpec, prefers_channels_last

PREFIX = "timm/"
log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def architectures() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


def check_name(name: str) -> None:
    """A usage error unless `timm/<arch>[.<tag>]` names an architecture (and a tag) timm knows."""
    arch, _, tag = name[len(PREFIX):].partition(".")
    known = architectures()
    if arch not in known:
        close = difflib.get_close_matches(arch, sorted(known), n=3, cutoff=0.6)
        raise UsageError(f"config key 'model.name' = {name!r} is invalid: timm has no architecture {arch!r}"
                         + (f" (closest: {', '.join(close)})" if close else "; see timm.list_models()"))
    if tag:
        import timm

        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
        if tag not in tags:
            raise UsageError(f"config key 'model.name' = {name!r} is invalid: timm's {arch} has no weights tag "
                             f"{tag!r}; tags: {', '.join(tags) or 'none'}")


_PROBE_CLASSES = 1013  # a class count no hidden layer has: the layers with this output width are the heads


def _probe(model_name: str, cfg: Any) -> tuple[tuple[str, ...], bool]:
    """(the classifier layers, whether NHWC helps), from a probe build on the meta device. The classifiers are
    the layers that output the class count (LeViT's distillation head included, which some pretrained configs
    leave out); for a builder that needs real tensors, the pretrained config's names."""
    import timm

    try:
        with torch.device("meta"):
            probe = timm.create_model(model_name, pretrained=False, num_classes=_PROBE_CLASSES)
    except Exception:  # noqa: BLE001 - a builder that needs real tensors
        probe = None
    found = () if probe is None else tuple(
        name for name, module in probe.named_modules()
        if (isinstance(module, nn.Linear) and module.out_features == _PROBE_CLASSES)
        or (isinstance(module, nn.Conv2d) and module.out_channels == _PROBE_CLASSES))
    channels_last = probe is None or prefers_channels_last(probe)
    if found:
        return found, channels_last
    classifier = cfg.get("classifier") or "head"
    return (tuple(classifier) if isinstance(classifier, (list, tuple)) else (classifier,)), channels_last


def _depths(model: nn.Module, fine: bool, heads: tuple[str, ...]) -> Depths:
    """timm's own grouping (group_matcher: coarse = stages, fine = blocks), the head left out. The matcher's
    first group is the stem, its last one what no pattern matched (a final norm, a neck) or a pattern
    that sorts last (ViT's final norm)."""
    from timm.models._manipulate import group_with_matcher

    try:
        matcher = model.group_matcher(coarse=not fine)
    except (AttributeError, NotImplementedError, AssertionError):  # none, or not for this grouping (rdnet)
        return depths_from_blocks(model, heads, fine)
    layer_of = group_with_matcher(((n, p) for n, p in model.named_parameters()
                                   if not any(n.startswith(head + ".") for head in heads)), matcher, reverse=True)
    last = max(layer_of.values(), default=0)
    neck = _is_neck(matcher, [n for n, layer in layer_of.items() if layer == last])
    return Depths(layer_of, last - 1 if neck else last)


def _is_neck(matcher: Any, names: list[str]) -> bool:
    """Whether the deepest group is not a stage: unmatched by the stage patterns, or ordered last on purpose
    (timm's (99999,) suffix)."""
    import re

    if not isinstance(matcher, dict):
        return False
    patterns = []
    for key, spec in matcher.items():
        if key == "stem" or spec is None:
            continue
        for entry in (spec if isinstance(spec, (list, tuple)) else [(spec, None)]):
            pattern, suffix = entry if isinstance(entry, (list, tuple)) else (entry, None)
            if suffix is None or suffix != (99999,):
                patterns.append(re.compile(pattern))
    return not any(p.match(name) for p in patterns for name in names)


def _no_weight_decay(model: nn.Module) -> set[str]:
    """The parameters matching the model's no_weight_decay() entries: names, module prefixes, or glob patterns
    (XCiT lists pos_embed.*), as timm matches them."""
    import fnmatch

    listed = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {name for name, _ in model.named_parameters()
            if any(name == entry or name.startswith(entry + ".") or name.endswith("." + entry)
                   or fnmatch.fnmatchcase(name, entry) for entry in listed)}


def spec(name: str) -> ModelSpec:
    import timm

    check_name(name)
    model_name = name[len(PREFIX):]
    pretrained = timm.models.get_pretrained_cfg(model_name) or timm.models.get_pretrained_cfg(
        model_name.partition(".")[0])
    cfg = pretrained.to_dict() if pretrained is not None else {}
    heads, channels_last = _probe(model_name, cfg)

    def build(settings: ModelSettings) -> nn.Module:
        kwargs = dict(settings.kwargs)

        def create(**extra: Any) -> nn.Module:
            return timm.create_model(model_name, pretrained=False, num_classes=settings.num_classes, **extra)

        def probe() -> nn.Module:
            with torch.device("meta"):
                return create()

        return build_with_kwargs(name, create, kwargs, probe)

    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    return ModelSpec(
        name, build, depths=lambda model, fine: _depths(model, fine, heads), input_size=size, heads=heads,
        takes_kwargs=True, no_weight_decay=_no_weight_decay,
        mean=tuple(cfg["mean"]) if cfg.get("mean") else None, std=tuple(cfg["std"]) if cfg.get("std") else None,
        crop_ratio=cfg.get("crop_pct"), fixed_input_size=bool(cfg.get("fixed_input_size")), size_keyword="img_size",
        min_input_size=max((cfg.get("min_input_size") or (3, 1, 1))[1:]), channels_last=channels_last,
        extra={"family": "timm", "hf_hub_id": cfg.get("hf_hub_id"), "interpolation": cfg.get("interpolation")})


def checkpoint_filter(model: nn.Module):
    """The architecture module's `checkpoint_filter_fn(state_dict, model)`, or None: what timm runs on load to
    map original layouts to its own and to resize position embeddings to the model's image size."""
    import sys

    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
