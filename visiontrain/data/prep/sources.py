"""What the writers read beyond the shared readers of `visiontrain.data.sources`: ImageNet's val layouts,
a val split made from a training folder alone, and CIFAR-10's batches as `Samples`.

Every bad layout is a UsageError naming the path.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from visiontrain.data.sources import Samples, cifar_sources, class_folders, require_dir, visible_files
from visiontrain.infra.errors import UsageError


def check_same_classes(train: Samples, val: Samples, val_root: Path) -> None:
    if train.class_names != val.class_names:
        only_train = sorted(set(train.class_names) - set(val.class_names))
        only_val = sorted(set(val.class_names) - set(train.class_names))
        raise UsageError(f"class names differ between train and {val_root}: only in train {only_train[:5]}, "
                         f"only in val {only_val[:5]}")


def stratified_split(samples: Samples, val_fraction: float, seed: int) -> tuple[Samples, Samples]:
    """Per class, a seeded shuffle; round(n x fraction) samples (at least 1) go to val."""
    if not 0 < val_fraction < 1:
        raise UsageError(f"--val-fraction {val_fraction}: must be in (0, 1)")
    rng = np.random.default_rng(seed)
    labels = np.asarray(samples.labels)
    train_idx, val_idx = [], []
    for label, name in enumerate(samples.class_names):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            raise UsageError(f"class {name!r} has {len(members)} image(s): too few to split off a val set")
        members = rng.permutation(members)
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val_idx += sorted(members[:n_val].tolist())
        train_idx += sorted(members[n_val:].tolist())
    return samples.subset(train_idx), samples.subset(val_idx)


def read_val_labels(path: Path) -> dict[str, str]:
    """Image stem -> wnid, from Kaggle's LOC_val_solution.csv or a 'filename wnid' text file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--val-labels {path} does not exist")
    text = path.read_text()
    mapping: dict[str, str] = {}
    if text.startswith("ImageId,"):
        for row in csv.DictReader(text.splitlines()):
            mapping[Path(row["ImageId"]).stem] = row["PredictionString"].split()[0]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise UsageError(f"--val-labels {path} line {number}: expected 'filename wnid', got {line!r}")
            mapping[Path(parts[0]).stem] = parts[1]
    if not mapping:
        raise UsageError(f"--val-labels {path} holds no labels")
    return mapping


def imagenet_val(val_root: Path, class_names: list[str], labels_file: Path | None) -> Samples:
    """ILSVRC val: `<wnid>/*.JPEG` folders, or flat files plus a labels file."""
    val_root = require_dir(val_root, "--val")
    if labels_file is not None and not labels_file.is_file():
        raise UsageError(f"--val-labels {labels_file} does not exist")
    if any(p.is_dir() for p in val_root.iterdir()):
        if labels_file is not None:
            raise UsageError(f"--val {val_root} has class folders, which give the labels: drop --val-labels "
                             f"{labels_file} (it is read only for a flat --val folder)")
        return class_folders(val_root, "--val")
    if labels_file is None:
        raise UsageError(f"--val {val_root} holds flat files: pass --val-labels (LOC_val_solution.csv "
                         "or 'filename wnid' lines)")
    mapping = read_val_labels(labels_file)
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels = [], []
    for path in visible_files(val_root):
        wnid = mapping.get(path.stem)
        if wnid is None:
            raise UsageError(f"{path} has no entry in --val-labels {labels_file}")
        if wnid not in index:
            raise UsageError(f"--val-labels gives {path.name} class {wnid!r}, which is not a training class")
        paths.append(path)
        labels.append(index[wnid])
    if not paths:
        raise UsageError(f"--val {val_root} has no images")
    return Samples(class_names, labels, paths)


def cifar10_batches(directory: Path) -> tuple[Samples, Samples]:
    train, val = cifar_sources(directory)
    return (Samples(train.class_names, list(train.labels), array=train.images),
            Samples(val.class_names, list(val.labels), array=val.images))
