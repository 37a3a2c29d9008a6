"""Training on part of a dataset: a subset of its classes and a fraction of its labels.

`data.classes=[5,6,7,8,9]` keeps those classes (train and val) and renumbers them
0..k-1 in the listed order; `data.train_fraction=0.1` keeps 10% of each kept class's
training samples (at least one), chosen with `data.subset_seed`. The choice depends
on nothing else (not run.seed, not the process count), so a from-scratch baseline and
a fine-tuned run see exactly the same labelled images.

Both backends read from the unchanged files: samplers draw from `indices` instead of
0..N-1, and `relabel` maps dataset labels to the subset's labels on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from visiontrain.config import DataConfig
from visiontrain.infra.errors import UsageError


@dataclass
class Selection:
    train_indices: list[int]
    val_indices: list[int]
    class_names: list[str]
    label_map: list[int] | None  # dataset label -> subset label (-1: not kept); None = identity


def is_subset(d: DataConfig) -> bool:
    return bool(d.classes) or d.train_fraction < 1.0


def select(d: DataConfig, class_names: list[str], train_labels, val_labels) -> Selection:
    """`train_labels=None`: evaluation only (no training indices)."""
    if train_labels is None:
        train_labels = np.zeros(0, dtype=np.int64)
        d = DataConfig(**{**d.__dict__, "train_fraction": 1.0}) if d.train_fraction < 1 else d
        evaluation_only = True
    else:
        evaluation_only = False
    train_labels, val_labels = np.asarray(train_labels), np.asarray(val_labels)
    if not is_subset(d):
        return Selection(list(range(len(train_labels))), list(range(len(val_labels))), list(class_names), None)
    kept = list(d.classes) or list(range(len(class_names)))
    bad = [c for c in kept if not 0 <= c < len(class_names)]
    if bad:
        raise UsageError(f"config key 'data.classes' = {list(d.classes)} is invalid: class {bad[0]} does not exist; "
                         f"the dataset has classes 0..{len(class_names) - 1}")
    label_map = [-1] * len(class_names)
    for new, old in enumerate(kept):
        label_map[old] = new
    rng = np.random.default_rng(d.subset_seed)
    train: list[int] = []
    for cls in kept:
        members = np.flatnonzero(train_labels == cls)
        if evaluation_only:
            continue
        if len(members) == 0:
            raise UsageError(f"config key 'data.classes' = {list(d.classes)}: class {cls} "
                             f"({class_names[cls]!r}) has no training samples")
        take = max(1, round(len(members) * d.train_fraction))
        train.extend(rng.choice(members, size=take, replace=False).tolist())
    val = np.flatnonzero(np.isin(val_labels, kept)).tolist()
    return Selection(sorted(train), val, [class_names[c] for c in kept], label_map)


class Relabel:
    """Dataset labels -> subset labels, on the device (a gather; no host sync)."""

    def __init__(self, label_map: list[int] | None, device: torch.device):
        self.table = None if label_map is None else torch.tensor(label_map, dtype=torch.long, device=device)

    def __call__(self, labels: torch.Tensor) -> torch.Tensor:
        return labels if self.table is None else self.table[labels]


def check_num_classes(num_classes: int, class_names: list[str], path, d: DataConfig) -> None:
    if len(class_names) != num_classes:
        kept = len(class_names)
        what = f"data.classes keeps {kept}" if d.classes else f"the dataset at {path} has {kept}"
        raise UsageError(f"config key 'model.num_classes' = {num_classes} but {what} classes")

