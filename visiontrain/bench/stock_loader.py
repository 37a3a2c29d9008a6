"""The input pipeline a user writes without this project, for `bench loader` to compare against:
torchvision's classification reference recipe (references/classification/presets.py) on the
original JPEGs.

    ImageFolder (PIL decode) -> RandomResizedCrop(res, bilinear, antialias) -> RandomHorizontalFlip
    -> PILToTensor -> ToDtype(float32, scale) -> Normalize(mean, std) -> DataLoader(workers, shuffle)

It hands over what the project's loaders hand over (float, normalized batches of `res` px) and
is timed in the same alternation; it is a benchmark baseline, never a training loader.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision import datasets
from torchvision.transforms import v2


class StockTorchvisionTrain:
    """`set_epoch(epoch)` and iteration, as `epoch_timings` drives the project's loaders."""

    def __init__(self, folder: Path, res: int, batch: int, workers: int, mean: list[float], std: list[float],
                 auto_augment: tuple | None = None):
        """`auto_augment`: ("rand", num_ops, magnitude of 31 bins) for torchvision's RandAugment or ("trivial", ...)
        for its TrivialAugmentWide, after the flip on the PIL image (the reference recipe's
        `auto_augment_policy` "ra" / "ta_wide")."""
        augment = [] if auto_augment is None else [
            v2.TrivialAugmentWide() if auto_augment[0] == "trivial" else v2.RandAugment(*auto_augment[1:])]
        transform = v2.Compose([
            v2.RandomResizedCrop(res, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.RandomHorizontalFlip(),
            *augment,
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ])
        self.dataset = datasets.ImageFolder(str(folder), transform=transform)
        self.generator = torch.Generator()
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
            persistent_workers=workers > 0, generator=self.generator)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(epoch)

    def __iter__(self):
        return iter(self.loader)


class StockBundle:
    """Just the `.train` that `epoch_timings` reads."""

    def __init__(self, train: StockTorchvisionTrain):
        self.train = train
