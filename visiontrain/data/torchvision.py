"""The torchvision backend: image folders and CIFAR-10's pickle batches via a DataLoader.

Layouts accepted at `data.path`:
- `train/<class>/*` and `val/<class>/*` image folders (torchvision's ImageFolder rules);
- CIFAR-10's `cifar-10-batches-py/` (or its contents): data_batch_1..5 and test_batch.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from visiontrain.data.sampling import seeded_rng
from visiontrain.errors import UsageError


class SampleSource(Dataset):
    """Raw samples: `load(i)` returns a PIL image or uint8 HWC array; `labels[i]` its class."""

    labels: list[int]
    class_names: list[str]

    def load(self, index: int):
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)


class FolderSource(SampleSource):
    def __init__(self, root: Path, class_names: list[str] | None = None):
        classes, class_to_idx = find_classes(str(root))
        if class_names is not None and classes != class_names:
            raise UsageError(
                f"class folders in {root} differ from the training classes: "
                f"{sorted(set(classes) ^ set(class_names))[:5]} are not in both"
            )
        self.class_names = classes
        self.samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
        self.labels = [label for _, label in self.samples]

    def load(self, index: int) -> Image.Image:
        with Image.open(self.samples[index][0]) as img:
            return img.convert("RGB")


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR batches hold dicts of numpy arrays; refuse anything else a file might smuggle in."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch file")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """(N x 32 x 32 x 3 uint8 images, labels) from one CIFAR-10 python pickle batch."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(data), [int(x) for x in batch["labels"]]
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as err:
        raise UsageError(f"{path} is not a CIFAR-10 batch file: {err}") from None


def find_cifar_dir(path: Path) -> Path | None:
    for candidate in (path / "cifar-10-batches-py", path):
        if (candidate / "data_batch_1").is_file():
            return candidate
    return None


class ArraySource(SampleSource):
    def __init__(self, images: np.ndarray, labels: list[int], class_names: list[str]):
        self.images, self.labels, self.class_names = images, labels, class_names

    def load(self, index: int) -> np.ndarray:
        return self.images[index]


def cifar_sources(directory: Path) -> tuple[ArraySource, ArraySource]:
    meta_path = directory / "batches.meta"
    names = [f"class_{i}" for i in range(10)]
    if meta_path.is_file():
        with open(meta_path, "rb") as f:
            names = list(_CifarUnpickler(f, encoding="latin1").load()["label_names"])
    parts = [read_cifar_batch(p) for p in sorted(directory.glob("data_batch_*"))]
    train = ArraySource(np.concatenate([p[0] for p in parts]), [y for p in parts for y in p[1]], names)
    if not (directory / "test_batch").is_file():
        raise UsageError(f"{directory} has no test_batch: the CIFAR-10 folder is incomplete")
    val = ArraySource(*read_cifar_batch(directory / "test_batch"), names)
    return train, val


def open_sources(path: Path) -> tuple[SampleSource, SampleSource]:
    """Train and val sample sources at `path`, or a UsageError describing what was expected."""
    cifar = find_cifar_dir(path)
    if cifar is not None:
        return cifar_sources(cifar)
    if (path / "train").is_dir():
        if not (path / "val").is_dir():
            raise UsageError(f"{path} has train/ but no val/ folder (make one with `python -m data_prep folder`)")
        try:
            train = FolderSource(path / "train")
            val = FolderSource(path / "val", class_names=train.class_names)
        except FileNotFoundError as err:  # ImageFolder's message names the empty folder
            raise UsageError(str(err)) from None
        return train, val
    raise UsageError(
        f"no dataset at data.path={path}: expected train/ and val/ class folders or CIFAR-10's "
        "cifar-10-batches-py/; create one with `python -m data_prep --help`"
    )


class AugmentedDataset(Dataset):
    """Items are keyed by (index, seed) or (index, valid) pairs from the samplers."""

    def __init__(self, source: SampleSource, transform, train: bool):
        self.source, self.transform, self.train = source, transform, train

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int | bool]):
        index, extra = key
        label = self.source.labels[index]
        if self.train:
            with seeded_rng(extra):
                image = self.transform(self.source.load(index))
            return image.as_subclass(torch.Tensor), label
        image = self.transform(self.source.load(index))
        return image.as_subclass(torch.Tensor), label, extra


def make_loader(dataset: AugmentedDataset, sampler, batch_size: int, num_workers: int, pin: bool, drop_last: bool):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
