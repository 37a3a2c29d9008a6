"""Test-time augmentation: the logits of an image averaged over a few fixed views of it.

- none: the image.
- flip: the image and its horizontal mirror, equally weighted.
- flip_translate: `flip` on the image (weight 1/2) and on the image shifted by one pixel
  up-left and down-right (1/4 each; the border is filled by reflection). Small CIFAR
  networks gain a few tenths of a percent from it (airbench and hlb-CIFAR10 evaluate this way).

The views are fixed (no randomness), so evaluation stays deterministic, and a view's
weight never depends on the batch. An image that equals its mirror gets the same
logits with `flip` as with `none` (up to floating-point rounding).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from visiontrain.config.sections import TTA_MODES


def _shifted(images: torch.Tensor, down: int) -> torch.Tensor:
    """`images` moved by one pixel down-right (down=1) or up-left (down=-1), borders reflected."""
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    height, width = images.shape[-2:]
    start = 1 - down
    return padded[..., start:start + height, start:start + width].contiguous(
        memory_format=torch.channels_last if images.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format)


def views(images: torch.Tensor, mode: str) -> list[tuple[float, torch.Tensor]]:
    """(weight, view) pairs whose weights sum to 1."""
    if mode == "none":
        return [(1.0, images)]
    mirrored = [(0.5, images), (0.5, images.flip(3))]
    if mode == "flip":
        return mirrored
    if mode == "flip_translate":
        shifted = [_shifted(images, 1), _shifted(images, -1)]
        return ([(0.25, view) for _, view in mirrored]
                + [(0.125, view) for image in shifted for view in (image, image.flip(3))])
    raise ValueError(f"unknown TTA mode {mode!r}; allowed: {', '.join(TTA_MODES)}")


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str) -> torch.Tensor:
    """The weighted mean of the model's float32 logits over the views of `mode`."""
    logits = None
    for weight, view in views(images, mode):
        part = model(view).float() * weight
        logits = part if logits is None else logits + part
    return logits
