"""Augmentation recipes on the CPU side, producing uint8 CHW tensors.

Normalization and float conversion happen on the device (see `DeviceNormalizer`),
as in FFCV's pipelines, so both data backends feed the model identically:
- cifar:    flip, random translation by up to `crop_padding` px (filled with the mean
            colour, like FFCV's RandomTranslate), optional Cutout. Eval: the image.
- imagenet: RandomResizedCrop(scale 0.08-1) + flip. Eval: resize to
            `val_image_size / val_crop_ratio`, centre crop `val_image_size`.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from visiontrain.config import DataConfig


class Cutout(torch.nn.Module):
    """Fill one random `size` x `size` square, fully inside the image, with `fill` (FFCV's Cutout)."""

    def __init__(self, size: int, fill: tuple[int, int, int]):
        super().__init__()
        self.size = size
        self.fill = torch.tensor(fill, dtype=torch.uint8).view(3, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        top = int(torch.randint(h - self.size + 1, ()))
        left = int(torch.randint(w - self.size + 1, ()))
        image = image.clone()
        image[:, top : top + self.size, left : left + self.size] = self.fill
        return image


def mean_uint8(cfg: DataConfig) -> tuple[int, int, int]:
    return tuple(round(255 * m) for m in cfg.mean)  # type: ignore[return-value]


def _to_size(size: int) -> list:
    # No-ops on images already at `size` (CIFAR-sized data); resizes anything else.
    return [v2.Resize(size, antialias=True), v2.CenterCrop(size)]


def train_transform(cfg: DataConfig) -> v2.Compose:
    to_uint8 = [v2.ToImage(), v2.ToDtype(torch.uint8)]
    if cfg.recipe == "imagenet":
        ops = [v2.RandomResizedCrop(cfg.image_size, scale=(0.08, 1.0), antialias=True)]
        ops += [v2.RandomHorizontalFlip()] if cfg.flip else []
        return v2.Compose(ops + to_uint8)
    ops = to_uint8 + _to_size(cfg.image_size)
    ops += [v2.RandomHorizontalFlip()] if cfg.flip else []
    if cfg.crop_padding:
        ops.append(v2.RandomCrop(cfg.image_size, padding=cfg.crop_padding, fill=mean_uint8(cfg)))
    if cfg.cutout:
        ops.append(Cutout(cfg.cutout, mean_uint8(cfg)))
    return v2.Compose(ops)


def eval_transform(cfg: DataConfig) -> v2.Compose:
    to_uint8 = [v2.ToImage(), v2.ToDtype(torch.uint8)]
    if cfg.recipe == "imagenet":
        resize = round(cfg.val_image_size / cfg.val_crop_ratio)
        return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(cfg.val_image_size)] + to_uint8)
    return v2.Compose(to_uint8 + _to_size(cfg.val_image_size))


class DeviceNormalizer:
    """uint8 NCHW batch (any device) -> float32 normalized batch on `device`, channels-last if asked."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device, channels_last: bool):
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.scale = 1.0 / (torch.tensor(std, device=device).view(1, 3, 1, 1) * 255)
        self.bias = -torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255 * self.scale

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # Copy the 1-byte pixels, not 4-byte floats; the layout change is done on the device.
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        # x * scale + bias, in place on the new float tensor: half the memory traffic of
        # (x - mean) / std with temporaries, which matters where this runs on a CPU.
        return images.float().mul_(self.scale).add_(self.bias)
