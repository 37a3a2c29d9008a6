"""Train and eval loaders for one rank, behind one interface for every data backend.

- `TrainLoader`: `set_epoch(epoch, start)`, then iterate micro-batches
  `(images, labels)` already on the device: float, normalized, channels-last if asked.
  One epoch is `steps_per_epoch * accum_steps` micro-batches (a partial last batch is
  dropped); `start` skips micro-batches already trained on (mid-epoch resume).
- `EvalLoader`: iterate `(images, labels, valid)`; `valid` is False on padding.
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

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]: ...


@dataclass
class DataBundle:
    train: TrainLoader
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
    def __init__(self, loader, sampler: ResumableDistributedSampler, normalize: DeviceNormalizer,
                 steps_per_epoch: int, micro_batch: int, accum_steps: int):
        self.loader, self.sampler, self.normalize = loader, sampler, normalize
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
            yield self.normalize(images), labels.to(device, non_blocking=True)


class TorchvisionEvalLoader:
    def __init__(self, loader, num_samples: int, normalize: DeviceNormalizer):
        self.loader, self.num_samples, self.normalize = loader, num_samples, normalize

    def __iter__(self):
        device = self.normalize.device
        for images, labels, valid in self.loader:
            yield self.normalize(images), labels.to(device, non_blocking=True), valid.to(device, non_blocking=True)


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
    def __init__(self, pool, num_batches: int):
        self.pool, self.num_batches = pool, num_batches
        self.num_samples = num_batches * pool[0][0].shape[0]

    def __iter__(self):
        for i in range(self.num_batches):
            images, labels = self.pool[i % len(self.pool)]
            yield images, labels, torch.ones_like(labels, dtype=torch.bool)


def build_data(cfg: Config, runtime: Runtime, micro_batch: int) -> DataBundle:
    d, t = cfg.data, cfg.train
    accum = t.grad_accum_steps
    if d.backend == "synthetic":
        steps = optimizer_steps_per_epoch(d.synthetic_train_samples, runtime.world_size, micro_batch, accum,
                                          "train.batch_size")
        args = (micro_batch, d.image_size, cfg.model.num_classes, runtime.device, cfg.model.channels_last)
        train_pool = synthetic.random_batches(steps * accum, *args, seed=cfg.run.seed)
        val_batches = max(1, d.synthetic_val_samples // (micro_batch * runtime.world_size))
        val_pool = synthetic.random_batches(val_batches, *args, seed=cfg.run.seed + 1)
        names = [f"class_{i}" for i in range(cfg.model.num_classes)]
        return DataBundle(SyntheticTrainLoader(train_pool, steps, micro_batch, accum),
                          SyntheticEvalLoader(val_pool, val_batches), cfg.model.num_classes, names,
                          d.synthetic_train_samples)
    if d.backend == "ffcv":
        from visiontrain.data.ffcv import build_ffcv_data  # imports numba: only when asked for

        return build_ffcv_data(cfg, runtime, micro_batch)
    return _build_torchvision_data(cfg, runtime, micro_batch)


def check_num_classes(cfg: Config, class_names: list[str], path) -> None:
    if len(class_names) != cfg.model.num_classes:
        raise UsageError(
            f"config key 'model.num_classes' = {cfg.model.num_classes} but the dataset at {path} "
            f"has {len(class_names)} classes"
        )


def _build_torchvision_data(cfg: Config, runtime: Runtime, micro_batch: int) -> DataBundle:
    from visiontrain.data import torchvision as tv

    d = cfg.data
    path = Path(d.path)
    train_src, val_src = tv.open_sources(path)
    check_num_classes(cfg, train_src.class_names, path)
    steps = optimizer_steps_per_epoch(len(train_src), runtime.world_size, micro_batch, cfg.train.grad_accum_steps,
                                      "train.batch_size")
    normalize = DeviceNormalizer(d.mean, d.std, runtime.device, cfg.model.channels_last)
    pin = runtime.device.type == "cuda"
    sampler = ResumableDistributedSampler(len(train_src), runtime.world_size, runtime.rank, cfg.run.seed)
    train = tv.make_loader(tv.AugmentedDataset(train_src, train_transform(d), train=True), sampler,
                           micro_batch, d.num_workers, pin, drop_last=True)
    val_sampler = EvalShardSampler(len(val_src), runtime.world_size, runtime.rank)
    val = tv.make_loader(tv.AugmentedDataset(val_src, eval_transform(d), train=False), val_sampler,
                         micro_batch, d.num_workers, pin, drop_last=False)
    return DataBundle(
        TorchvisionTrainLoader(train, sampler, normalize, steps, micro_batch, cfg.train.grad_accum_steps),
        TorchvisionEvalLoader(val, len(val_src), normalize),
        len(train_src.class_names), train_src.class_names, len(train_src),
    )
