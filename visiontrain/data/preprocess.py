"""One image file -> the model's input pixels, as evaluation sees them: the one implementation that the
torchvision loader's evaluation path, `python -m visiontrain predict` and the export check share.

Steps (an evaluation recipe of `augment.py`, `eval_recipe`):
1. decode the file and convert it to RGB (greyscale, palette, CMYK and alpha images included):
   `sources.read_image`, the decode the loaders also give class-folder files for training;
2. resize so that the shorter side is `resize_to` (bilinear with antialiasing), unless the image is
   already `size` x `size` and `resize_to == size`: such images (CIFAR-10) are used exactly as stored;
3. take the centre `size` x `size` (torchvision's CenterCrop: the offset rounds half to even);
4. uint8 CHW tensor. Normalization, `(pixel / 255 - mean) / std`, is done on the device
   (`base.DeviceNormalizer`), for training, evaluation and prediction alike.
`describe()` states these steps in the exported model's JSON contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from visiontrain.data.augment import AsIs, Recipe, ResizeCenterCrop
from visiontrain.infra.errors import UsageError


def image_files(paths: list[str]) -> list[Path]:
    """Files named on a command line, and the image files (by extension, recursively) under folders named
    there, in the order given (each folder sorted); UsageError naming a path that does not exist."""
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"{name} does not exist: give image files or folders of images")
    return found


@dataclass(frozen=True)
class EvalPreprocess:
    """Steps 2-4 above: an RGB image (PIL, or a uint8 HWC array) -> uint8 CHW tensor of `size` x `size`."""

    size: int
    resize_to: int

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> EvalPreprocess:
        match recipe.sizing:
            case AsIs(size):
                return cls(size, size)
            case ResizeCenterCrop(size, ratio):
                return cls(size, round(size / ratio))
        raise TypeError(f"{recipe.sizing!r} is not an evaluation sizing step")

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            if image.shape[:2] == (self.size, self.size) and self.resize_to == self.size:
                return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
            image = Image.fromarray(image)
        if image.size != (self.size, self.size) or self.resize_to != self.size:
            image = v2.functional.resize(image, self.resize_to, antialias=True)
            image = v2.functional.center_crop(image, self.size)
        return v2.functional.pil_to_tensor(image)

    def batch(self, images: list) -> torch.Tensor:
        """N source images -> N x 3 x size x size uint8."""
        return torch.stack([self(image) for image in images])

    def describe(self) -> dict:
        return {
            "decode": "RGB (greyscale, palette, CMYK and alpha converted to RGB)",
            "resize": {"shorter_side": self.resize_to, "interpolation": "bilinear", "antialias": True,
                       "library": "PIL (torchvision.transforms.v2.functional.resize)",
                       "skipped_when": f"the image is already {self.size}x{self.size}"
                                       if self.resize_to == self.size else "never"},
            "center_crop": self.size,
        }
