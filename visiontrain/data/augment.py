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
Normalization is not part of a recipe: uint8 pixels are normalized on the device
(`base.DeviceNormalizer`).
"""

from __future__ import annotations

from dataclasses import dataclass

from visiontrain.config import DataConfig

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


Sizing = AsIs | ResizeCenterCrop | RandomResizedCrop
PixelOp = Flip | Translate | Cutout


@dataclass(frozen=True)
class Recipe:
    sizing: Sizing
    ops: tuple[PixelOp, ...] = ()


def mean_fill(d: DataConfig) -> Fill:
    return tuple(round(255 * m) for m in d.mean)  # type: ignore[return-value]


def train_recipe(d: DataConfig) -> Recipe:
    flip = [Flip(d.alternate_flip)] if d.flip else []
    if d.recipe == "imagenet":
        return Recipe(RandomResizedCrop(d.image_size), tuple(flip))
    ops: list[PixelOp] = flip
    if d.crop_padding:
        ops.append(Translate(d.crop_padding, mean_fill(d), d.translate_fill == "reflect"))
    if d.cutout:
        ops.append(Cutout(d.cutout, mean_fill(d)))
    return Recipe(AsIs(d.image_size), tuple(ops))


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
