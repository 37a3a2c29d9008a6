"""The augmentation recipes, described once: change augmentation HERE.

A `Recipe` is a sizing step (how a stored image becomes `size` x `size`) followed by pixel
operations on the sized image, in order. `train_recipe` and `eval_recipe` derive them from
the config; the image loaders are built from what they return:
- `ffcv_loader.py` maps each op to an FFCV operation (`ffcv_ops.py`),
- `torch_loader.py` maps each op to a batch kernel on the CPU (`kernels.py`),
- `device_loader.py` maps each op of the cifar recipe to tensor ops on the training device,
and all three draw an op's randomness from the same hash (`draws.py`), so for the same seed,
epoch and sample the loaders produce the same augmented pixels. A new op is a dataclass here
plus one case in each of those three mappings (the device loader refuses what it lacks).

Recipes (`data.recipe`):
- cifar:    the image as stored; flip; translate by up to `data.crop_padding` px, filled
            with the mean colour; optional Cutout (`data.cutout`). Eval: the image as stored.
- imagenet: RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3) + flip. Eval: resize to
            `val_image_size / val_crop_ratio`, centre crop `val_image_size`.
Both recipes then take the `augment` section's ops (RandAugment / TrivialAugmentWide, 3-Augment,
colour jitter, random erasing: `KernelOp`s, run by the per-sample kernels of `data/ops/`), which
the FFCV and torchvision loaders apply with the same kernels. Mixup / CutMix act on whole batches
on the training device (`train/mixing.py`), after any loader.
Normalization is not part of a recipe: uint8 pixels are normalized on the device
(`base.DeviceNormalizer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from visiontrain.config import AugmentConfig, DataConfig

Fill = tuple[int, int, int]  # uint8 RGB


@dataclass(frozen=True)
class AsIs:
    """The stored image, `size` x `size`. FFCV refuses other sizes; the torchvision loader, which reads
    arbitrary files, resizes the shorter side to `size` and centre-crops."""

    size: int


@dataclass(frozen=True)
class ResizeCenterCrop:
    """Resize the shorter side to `size / ratio`, then take the centre `size` x `size`."""

    size: int
    ratio: float


@dataclass(frozen=True)
class RandomResizedCrop:
    """A random crop (`scale`: fraction of the area, `ratio`: aspect w/h) resized to `size` x `size`
    with OpenCV's INTER_AREA (what FFCV's decoder uses)."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Flip:
    """Mirror left-right with probability 1/2; `alternate`: epoch 0's choice, inverted on odd epochs."""

    alternate: bool = False


@dataclass(frozen=True)
class Translate:
    """Shift by up to `padding` px each way (uniform per axis); uncovered pixels get `fill`, or with
    `reflect` the pixel mirrored at the border (index -1 reads 1, index n reads n - 2)."""

    padding: int
    fill: Fill
    reflect: bool = False


@dataclass(frozen=True)
class Cutout:
    """Fill one `size` x `size` square lying fully inside the image with `fill`."""

    size: int
    fill: Fill


@dataclass(frozen=True)
class KernelOp:
    """An op run by a per-sample kernel of `data/ops/` (`ops.kernel_of`): `params` is its parameter vector.
    Every loader applies it the same way: the kernel, keyed by (seed, `salt`, epoch, sample index)."""

    def params(self) -> tuple[float, ...]:
        raise NotImplementedError


@dataclass(frozen=True)
class AutoAugment(KernelOp):
    """RandAugment or TrivialAugmentWide (`ops/auto_augment.py`): `policy` is `augment.auto`'s text;
    geometric ops fill with `fill`."""

    policy: str
    fill: Fill

    def params(self) -> tuple[float, ...]:
        from visiontrain.data.ops.auto_augment import parse_policy

        return tuple(parse_policy(self.policy).params())


@dataclass(frozen=True)
class ThreeAugment(KernelOp):
    """One of grayscale, solarize, Gaussian blur per image (DeiT III; `ops/color.py`)."""

    def params(self) -> tuple[float, ...]:
        return (0.0,)


@dataclass(frozen=True)
class ColorJitter(KernelOp):
    """Brightness, contrast, saturation factors uniform in [1 - strength, 1 + strength], random order."""

    strength: float

    def params(self) -> tuple[float, ...]:
        return (self.strength,)


@dataclass(frozen=True)
class RandomErasing(KernelOp):
    """With probability `prob`, `count` rectangles (area fraction in `area`, aspect ratio in `ratio`) filled
    with `fill` (`mode` const) or uniform noise (`mode` pixel); `ops/erasing.py`."""

    prob: float
    area: tuple[float, float]
    ratio: tuple[float, float]
    count: int
    mode: str
    fill: Fill

    def params(self) -> tuple[float, ...]:
        from visiontrain.data.ops.erasing import MODES

        return (self.prob, *self.area, math.log(self.ratio[0]), math.log(self.ratio[1]), self.count,
                MODES.index(self.mode))


Sizing = AsIs | ResizeCenterCrop | RandomResizedCrop
PixelOp = Flip | Translate | Cutout | AutoAugment | ThreeAugment | ColorJitter | RandomErasing


@dataclass(frozen=True)
class Recipe:
    sizing: Sizing
    ops: tuple[PixelOp, ...] = ()


def mean_fill(d: DataConfig) -> Fill:
    return tuple(round(255 * m) for m in d.mean)  # type: ignore[return-value]


def train_recipe(d: DataConfig, a: AugmentConfig | None = None) -> Recipe:
    """The training recipe: sizing, flip (and the cifar recipe's translate and cutout), then the `augment`
    section's ops in timm's order: colour ops (RandAugment / TrivialAugment, 3-Augment, jitter), random
    erasing last."""
    ops: list[PixelOp] = [Flip(d.alternate_flip)] if d.flip else []
    if d.recipe == "cifar" and d.crop_padding:
        ops.append(Translate(d.crop_padding, mean_fill(d), d.translate_fill == "reflect"))
    if d.recipe == "cifar" and d.cutout:
        ops.append(Cutout(d.cutout, mean_fill(d)))
    if a is not None:
        ops += augment_ops(a, mean_fill(d))
    sizing: Sizing = RandomResizedCrop(d.image_size) if d.recipe == "imagenet" else AsIs(d.image_size)
    return Recipe(sizing, tuple(ops))


def augment_ops(a: AugmentConfig, fill: Fill) -> list[PixelOp]:
    ops: list[PixelOp] = []
    if a.auto:
        ops.append(AutoAugment(a.auto, fill))
    if a.three_augment:
        ops.append(ThreeAugment())
    if a.color_jitter:
        ops.append(ColorJitter(a.color_jitter))
    if a.erase_prob:
        ops.append(RandomErasing(a.erase_prob, (a.erase_area[0], a.erase_area[1]),
                                 (a.erase_ratio[0], a.erase_ratio[1]), a.erase_count, a.erase_mode, fill))
    return ops


def eval_recipe(d: DataConfig) -> Recipe:
    if d.recipe == "imagenet":
        return Recipe(ResizeCenterCrop(d.val_image_size, d.val_crop_ratio))
    return Recipe(AsIs(d.val_image_size))


def resolution_for_epoch(epoch: int, d: DataConfig) -> int:
    """FFCV's progressive-resizing schedule: min_res until the ramp, linear, then max_res."""
    if not d.progressive_resizing:
        return d.image_size
    if epoch <= d.ramp_start_epoch:
        res = d.min_res
    elif epoch >= d.ramp_end_epoch:
        res = d.max_res
    else:
        fraction = (epoch - d.ramp_start_epoch) / (d.ramp_end_epoch - d.ramp_start_epoch)
        res = d.min_res + fraction * (d.max_res - d.min_res)
    return max(d.min_res, int(res) // d.res_multiple * d.res_multiple)
