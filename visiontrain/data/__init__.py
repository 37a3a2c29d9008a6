"""Train and eval loaders for one rank, behind one interface for every data backend.

- `TrainLoader`: `set_epoch(epoch, start)`, then iterate micro-batches
  `(images, labels)` already on the device: float, normalized, channels-last if asked.
  One epoch is `steps_per_epoch * accum_steps` micro-batches (a partial last batch is
  dropped); `start` skips micro-batches already trained on (mid-epoch resume).
- `EvalLoader`: iterate `(images, labels, valid)`; `valid` is False on padding.
  `sample_indices[i]` is the dataset index of this rank's i-th eval sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator, Protocol

import torch

from visiontrain.config import Config
from visiontrain.data import synthetic
from visiontrain.data.sampling import EvalShardSampler, ResumableDistributedSampler
from visiontrain.data.subset import Relabel, check_num_classes, is_subset, select
from visiontrain.data.transforms import DeviceNormalizer, eval_transform, train_transform
from visiontrain.dist import Runtime
from visiontrain.errors import UsageError


class TrainLoader(Protocol):
    steps_per_epoch: int
    micro_batch: int
    accum_steps: int

    def set_epoch(self, epoch: int, start: int = 0) -> None: ...
    def epoch_indices(self) -> list[int]: ...
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class EvalLoader(Protocol):
    num_samples: int
    sample_indices: list[int]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]: ...


@dataclass
class DataBundle:
    train: TrainLoader | None  # None when built for evaluation only
    val: EvalLoader
    num_classes: int
    class_names: list[str]
    train_samples: int


def optimizer_steps_per_epoch(num_samples: int, world_size: int, micro_batch: int, accum: int, key: str) -> int:
    steps = (num_samples // world_size) // micro_batch // accum
    if steps == 0:
        raise UsageError(
            f"config key '{key}' is too large: {num_samples} training samples over {world_size} process(es) "
            f"do not fill one optimizer step of {world_size * micro_batch * accum} images"
        )
    return steps


class TorchvisionTrainLoader:
    def __init__(self, loader, sampler: ResumableDistributedSampler, normalize: DeviceNormalizer, relabel: Relabel,
                 steps_per_epoch: int, micro_batch: int, accum_steps: int):
        self.loader, self.sampler, self.normalize, self.relabel = loader, sampler, normalize, relabel
        self.steps_per_epoch, self.micro_batch, self.accum_steps = steps_per_epoch, micro_batch, accum_steps
        self._remaining = steps_per_epoch * accum_steps

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch, start * self.micro_batch)
        self._remaining = self.steps_per_epoch * self.accum_steps - start

    def epoch_indices(self) -> list[int]:
        return self.sampler.epoch_indices()[: self.steps_per_epoch * self.accum_steps * self.micro_batch]

    def __iter__(self):
        device = self.normalize.device
        for images, labels in islice(self.loader, self._remaining):
            yield self.normalize(images), self.relabel(labels.to(device, non_blocking=True))


class TorchvisionEvalLoader:
    def __init__(self, loader, sampler: EvalShardSampler, num_samples: int, normalize: DeviceNormalizer,
                 relabel: Relabel):
        self.loader, self.num_samples, self.normalize, self.relabel = loader, num_samples, normalize, relabel
        self.sample_indices = list(sampler.indices)

    def __iter__(self):
        device = self.normalize.device
        for images, labels, valid in self.loader:
            yield (self.normalize(images), self.relabel(labels.to(device, non_blocking=True)),
                   valid.to(device, non_blocking=True))


class SyntheticTrainLoader:
    """Random device tensors; `set_epoch`/`start` only decide how many batches remain."""

    def __init__(self, pool, steps_per_epoch: int, micro_batch: int, accum_steps: int):
        self.pool, self.steps_per_epoch, self.micro_batch, self.accum_steps = pool, steps_per_epoch, micro_batch, accum_steps
        self._remaining = steps_per_epoch * accum_steps

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self._remaining = self.steps_per_epoch * self.accum_steps - start

    def epoch_indices(self) -> list[int]:
        return []

    def __iter__(self):
        for i in range(self._remaining):
            yield self.pool[i % len(self.pool)]


class SyntheticEvalLoader:
    def __init__(self, pool, num_batches: int, rank: int):
        self.pool, self.num_batches = pool, num_batches
        self.num_samples = num_batches * pool[0][0].shape[0]
        self.sample_indices = list(range(rank * self.num_samples, (rank + 1) * self.num_samples))

    def __iter__(self):
        for i in range(self.num_batches):
            images, labels = self.pool[i % len(self.pool)]
            yield images, labels, torch.ones_like(labels, dtype=torch.bool)


def build_data(cfg: Config, runtime: Runtime, micro_batch: int, train: bool = True) -> DataBundle:
    """Loaders for this rank; `train=False` builds the eval loader only (python -m visiontrain.evaluate)."""
    d, t = cfg.data, cfg.train
    accum = t.grad_accum_steps
    if d.backend == "synthetic":
        if is_subset(d):
            raise UsageError("data.classes and data.train_fraction select from a dataset's labels; "
                             "data.backend=synthetic has none (use data_prep synthetic for a generated dataset)")
        steps = optimizer_steps_per_epoch(d.synthetic_train_samples, runtime.world_size, micro_batch, accum,
                                          "train.batch_size")
        args = (micro_batch, d.image_size, cfg.model.num_classes, runtime.device, cfg.model.channels_last)
        train_pool = synthetic.random_batches(steps * accum, *args, seed=cfg.run.seed)
        val_batches = max(1, d.synthetic_val_samples // (micro_batch * runtime.world_size))
        val_pool = synthetic.random_batches(val_batches, *args, seed=cfg.run.seed + 1)
        names = [f"class_{i}" for i in range(cfg.model.num_classes)]
        return DataBundle(SyntheticTrainLoader(train_pool, steps, micro_batch, accum),
                          SyntheticEvalLoader(val_pool, val_batches, runtime.rank), cfg.model.num_classes, names,
                          d.synthetic_train_samples)
    if d.backend == "ffcv":
        from visiontrain.data.ffcv import build_ffcv_data  # imports numba: only when asked for

        return build_ffcv_data(cfg, runtime, micro_batch, train)
    return _build_torchvision_data(cfg, runtime, micro_batch, train)


def _build_torchvision_data(cfg: Config, runtime: Runtime, micro_batch: int, train: bool) -> DataBundle:
    from visiontrain.data import torchvision as tv

    d = cfg.data
    path = Path(d.path)
    train_src, val_src = tv.open_sources(path)
    chosen = select(d, train_src.class_names, train_src.labels if train else None, val_src.labels)
    check_num_classes(cfg.model.num_classes, chosen.class_names, path, d)
    relabel = Relabel(chosen.label_map, runtime.device)
    normalize = DeviceNormalizer(d.mean, d.std, runtime.device, cfg.model.channels_last)
    pin = runtime.device.type == "cuda"
    val_sampler = EvalShardSampler(chosen.val_indices, runtime.world_size, runtime.rank)
    val = TorchvisionEvalLoader(
        tv.make_loader(tv.AugmentedDataset(val_src, eval_transform(d), train=False), val_sampler, micro_batch,
                       d.num_workers, pin, drop_last=False),
        val_sampler, len(chosen.val_indices), normalize, relabel)
    train_loader = None
    if train:
        steps = optimizer_steps_per_epoch(len(chosen.train_indices), runtime.world_size, micro_batch,
                                          cfg.train.grad_accum_steps, "train.batch_size")
        sampler = ResumableDistributedSampler(chosen.train_indices, runtime.world_size, runtime.rank, cfg.run.seed)
        loader = tv.make_loader(tv.AugmentedDataset(train_src, train_transform(d), train=True), sampler,
                                micro_batch, d.num_workers, pin, drop_last=True)
        train_loader = TorchvisionTrainLoader(loader, sampler, normalize, relabel, steps, micro_batch,
                                              cfg.train.grad_accum_steps)
    return DataBundle(train_loader, val, len(chosen.class_names), chosen.class_names, len(chosen.train_indices))
