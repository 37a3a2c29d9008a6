"""Stages and blocks of an architecture that does not name them: the depth map of the model contract
(`ModelSpec.depths`) found from the module tree, for torchvision's models and timm's models without a
`group_matcher`.

The walk starts at the model and goes down while one child holds nearly all parameters (a ViT's
`encoder`, then its `layers`; a RegNet's `trunk_output`), stopping at a sequence of composite modules,
then takes that module's children as the blocks: those made of several layers with parameters (ResNet's
`layer1..4`, MobileNet's `features.*`), or every parameterised child where none is (VGG's convolutions).
Parameters met before the first block are the stem (depth 0), after the last one the neck (S + 1); the
head is left out. Stages and blocks are the same here: `fine` changes nothing.
"""

from __future__ import annotations

from torch import nn

from visiontrain.models.contract import Depths

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding, nn.MultiheadAttention, *NORMS)
_DOMINANT = 0.9  # a child holding this share of the parameters is descended into


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _is_composite(module: nn.Module) -> bool:
    """Made of several layers that own parameters (a block), not one layer."""
    owners = (m for m in module.modules() if next(m.parameters(recurse=False), None) is not None)
    return next(owners, None) is not None and next(owners, None) is not None


def blocks(model: nn.Module, heads: tuple[str, ...]) -> list[str]:
    """The module names of the blocks, from input to output."""
    def holds_head(name: str) -> bool:
        return any(head == name or head.startswith(name + ".") for head in heads)

    prefix, node = "", model
    while True:
        children = [(prefix + name, child) for name, child in node.named_children()
                    if _size(child) and not holds_head(prefix + name)]
        composites = [(name, child) for name, child in children if _is_composite(child)]
        total = sum(_size(child) for _, child in children)
        dominant = [(name, child) for name, child in composites if _size(child) >= _DOMINANT * total]
        is_sequence = isinstance(node, (nn.Sequential, nn.ModuleList)) and len(composites) >= 2
        if dominant and not is_sequence:
            prefix, node = dominant[0][0] + ".", dominant[0][1]
            continue
        return [name for name, _ in (composites or children)]


def depths_from_blocks(model: nn.Module, heads: tuple[str, ...], fine: bool = False) -> Depths:
    """{parameter name: depth}: 0 stem, 1..S the blocks, S + 1 the neck; head parameters left out."""
    names = blocks(model, heads)
    depths: dict[str, int] = {}
    seen_block = False
    for name, _ in model.named_parameters():
        if any(name.startswith(head + ".") for head in heads):
            continue
        index = next((i for i, block in enumerate(names, start=1) if name.startswith(block + ".")), None)
        if index is not None:
            seen_block = True
            depths[name] = index
        else:
            depths[name] = len(names) + 1 if seen_block else 0
    return Depths(depths, len(names))


def free_parameters(model: nn.Module) -> set[str]:
    """Parameters owned by no standard layer (class tokens, position embeddings, relative-position tables,
    layer scales): what gets no weight decay when the architecture does not list its own."""
    found = set()
    for module_name, module in model.named_modules():
        if isinstance(module, LAYERS):
            continue
        for name, _ in module.named_parameters(recurse=False):
            found.add(f"{module_name}.{name}" if module_name else name)
    return found
