"""Per-sample augmentation ops on uint8 H x W x C images, in numba: one file per op family.

Each op is a kernel `apply(image, scratch, key, params, fill)` that changes `image` in place,
drawing its randomness from `draws.py`'s per-sample key (a hash of seed, op, epoch and sample
index). The FFCV loader runs it in FFCV's parallel loop (`ffcv_ops.SeededImageOp`), the
torchvision loader image by image (`torch_loader`): the same compiled code on the same bytes, so
both loaders give the same pixels. `params` is a read-only float64 vector (`draws.frozen`) that
the op's description in `augment.py` builds; `scratch` is an image-sized buffer.

- `auto_augment.py`: RandAugment and TrivialAugmentWide over 14 image operations;
- `erasing.py`: random erasing;
- `color.py`: the 3-Augment of DeiT III (grayscale / solarize / blur) and colour jitter.
"""

from __future__ import annotations

from typing import Callable


def kernel_of(op) -> tuple[Callable, int]:
    """(per-sample kernel, draw salt) of a `augment.KernelOp`."""
    from visiontrain.data import augment, draws
    from visiontrain.data.ops.auto_augment import auto_augment
    from visiontrain.data.ops.color import color_jitter, three_augment
    from visiontrain.data.ops.erasing import erase

    match op:
        case augment.AutoAugment():
            return auto_augment, draws.SALT_AUTO_AUGMENT
        case augment.ThreeAugment():
            return three_augment, draws.SALT_THREE_AUGMENT
        case augment.ColorJitter():
            return color_jitter, draws.SALT_JITTER
        case augment.RandomErasing():
            return erase, draws.SALT_ERASE
    raise TypeError(f"{op!r} has no per-sample kernel")


def fill_of(op) -> tuple[int, int, int]:
    return getattr(op, "fill", (0, 0, 0))
