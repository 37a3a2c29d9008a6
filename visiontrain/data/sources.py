"""The dataset readers: class folders, CIFAR-10's python batches and image decoding (`read_image`, which
prediction uses too), for the loaders and the writers alike.

Layouts:
- class folders, `<root>/<class>/**`: `class_folders` lists them, the one listing behind the torchvision
  and device loaders (`open_sources`, `FolderSource`) and the writers of `visiontrain prep`;
- CIFAR-10's `cifar-10-batches-py/` (or its contents): data_batch_1..5 and test_batch (`cifar_sources`).

Which files of a class folder are samples, for every reader alike: every visible file (no name on its
path below `root` starts with "."), in sub-folders too, whatever its suffix. A non-image file is then a
bad file that gets named, never one left out without a word: a loader stops on it; a writer stops, or
with `--on-bad skip` leaves it out and counts it in meta.json. A rule by suffix would silently drop
images stored under other suffixes (.gif, .jfif, none). One listing also means that the loaders and the
.beton files number a folder's samples alike, so their augmentation draws (keyed by sample index) agree.
Labels are the positions of the sorted class names, as torchvision's ImageFolder numbers them.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from visiontrain.infra.errors import UsageError


@dataclass
class Samples:
    """A dataset split as a list: class names in label order, each sample's label and its image source."""

    class_names: list[str]
    labels: list[int]
    paths: list[Path] = field(default_factory=list)  # files, or
    array: np.ndarray | None = None  # N x H x W x 3 uint8 images

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: list[int]) -> Samples:
        return Samples(self.class_names, [self.labels[i] for i in keep],
                       [self.paths[i] for i in keep] if self.paths else [],
                       self.array[keep] if self.array is not None else None)


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{what} {path} is not a directory")
    return path


def visible_files(folder: Path) -> list[Path]:
    """Every visible regular file below `folder` (sub-folders included, symlinked ones too), sorted."""
    found = []
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [Path(directory, name) for name in files if not name.startswith(".")]
    return sorted(path for path in found if path.is_file())


def class_folders(root: Path, what: str = "folder") -> Samples:
    """`root/<class>/**/*`: one folder per class, sorted names = labels 0..K-1; `what` names `root` in errors."""
    root = require_dir(root, what)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(f"{what} {root} has no class folders (expected {root}/<class>/<images>)")
    if len(classes) < 2:
        raise UsageError(f"{what} {root} has one class folder ({classes[0]}): a classifier needs at least 2 "
                         f"(expected {root}/<class>/<images> for every class)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = visible_files(root / name)
        if not files:
            raise UsageError(f"class folder {root / name} is empty")
        paths += files
        labels += [label] * len(files)
    return Samples(classes, labels, paths)


class UnreadableImage(UsageError):
    """A file that is not a decodable image; the message names it and says why."""


# 16-bit greyscale (PNG, TIFF): PIL's convert("RGB") clips it to 0..255, turning almost every pixel white.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, the one conversion every reader and writer uses: 16-bit greyscale is scaled
    (x / 257, rounded), not clipped."""
    if img.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(img, dtype=np.uint32)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def read_image(path: Path) -> Image.Image:
    """The file's pixels as an RGB image (fully decoded, so a truncated file fails here; `to_rgb`)."""
    try:
        with Image.open(path) as img:
            return to_rgb(img)
    except Exception as err:  # truncated, not an image, a broken chunk, a directory: PIL raises many kinds
        raise UnreadableImage(f"image {path} cannot be read ({type(err).__name__}: {err})") from None


class SampleSource:
    """Raw samples: `load(i)` returns a PIL image or uint8 HWC array; `labels[i]` its class."""

    labels: list[int]
    class_names: list[str]

    def load(self, index: int):
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)


class FolderSource(SampleSource):
    """The image files of `class_folders(root)`, decoded when loaded; `samples`: (path, label) pairs."""

    def __init__(self, root: Path, class_names: list[str] | None = None):
        found = class_folders(root)
        if class_names is not None and found.class_names != class_names:
            raise UsageError(
                f"class folders in {root} differ from the training classes: "
                f"{sorted(set(found.class_names) ^ set(class_names))[:5]} are not in both"
            )
        self.class_names = found.class_names
        self.samples = [(str(path), label) for path, label in zip(found.paths, found.labels)]
        self.labels = found.labels

    def load(self, index: int) -> Image.Image:
        try:
            return read_image(self.samples[index][0])
        except UnreadableImage as err:
            raise UsageError(f"{err}; remove or replace it, or write the dataset with `visiontrain prep folder "
                             "--on-bad skip`, which leaves such files out") from None


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


CIFAR_ERRORS = (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError, AttributeError, IndexError)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """(N x 32 x 32 x 3 uint8 images, labels) from one CIFAR-10 python pickle batch."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(data), [int(x) for x in batch["labels"]]
    except CIFAR_ERRORS as err:
        raise UsageError(f"{path} is not a CIFAR-10 batch file: {err}") from None


def read_cifar_class_names(path: Path) -> list[str]:
    try:
        with open(path, "rb") as f:
            return [str(name) for name in _CifarUnpickler(f, encoding="latin1").load()["label_names"]]
    except CIFAR_ERRORS as err:
        raise UsageError(f"{path} is not a CIFAR-10 batches.meta file: {err}") from None


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
        names = read_cifar_class_names(meta_path)
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
            raise UsageError(f"{path} has train/ but no val/ folder "
                             "(make one with `python -m visiontrain prep folder`)")
        train = FolderSource(path / "train")
        return train, FolderSource(path / "val", class_names=train.class_names)
    raise UsageError(
        f"no dataset at data.path={path}: expected train/ and val/ class folders or CIFAR-10's "
        "cifar-10-batches-py/; create one with `python -m visiontrain prep --help`"
    )
