"""The torchvision loader: image folders and CIFAR-10's pickle batches via a torch DataLoader.

Layouts accepted at `data.path` (read by `sources.py`, which says which files are samples):
- `train/<class>/*` and `val/<class>/*` image folders;
- CIFAR-10's `cifar-10-batches-py/` (or its contents): data_batch_1..5 and test_batch.

Augmentation: the recipes of `augment.py`. Each op maps to a batch kernel of `kernels.py`
drawing from `draws.py`'s hash of (seed, op, epoch, sample index), like FFCV's operations, so
for the same seed, epoch and sample both loaders produce the same pixels. The DataLoader fetches
whole batches (a batch sampler + `BatchDataset.__getitems__`): the kernels run once per
batch. Evaluation (no randomness) is `preprocess.py`'s per-image step, shared with prediction.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset
from torchvision.transforms import v2

from visiontrain.config import Config
from visiontrain.data import augment
from visiontrain.data.augment import (
    AsIs,
    Cutout,
    Flip,
    KernelOp,
    PixelOp,
    RandomResizedCrop,
    Recipe,
    Sizing,
    Translate,
)
from visiontrain.data.base import DataBundle, DeviceNormalizer, SampledTrainLoader
from visiontrain.data.draws import SALT_CROP, frozen, random_resized_crop, sample_keys
from visiontrain.data.kernels import cutout_batch, flip_batch, translate_batch
from visiontrain.data.ops import fill_of, kernel_of
from visiontrain.data.preprocess import EvalPreprocess
from visiontrain.data.sampling import EvalShardSampler, ResumableDistributedSampler, copy_key
from visiontrain.data.sources import SampleSource, open_sources
from visiontrain.data.subset import Relabel, check_num_classes, select
from visiontrain.infra.errors import UsageError
from visiontrain.parallel.batch_plan import BatchPlan
from visiontrain.parallel.runtime import Runtime


def _to_size(size: int) -> list:
    # No-ops on images already at `size`; resizes anything else.
    return [v2.Resize(size, antialias=True), v2.CenterCrop(size)]


class _AsIs:
    """`AsIs` for files of any size: images already `size` x `size` are copied as they are."""

    def __init__(self, size: int):
        self.size = size
        self.fit = v2.Compose(_to_size(size))

    def __call__(self, images: list, indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
        batch = np.empty((len(images), self.size, self.size, 3), dtype=np.uint8)
        for k, image in enumerate(images):
            pixels = np.asarray(image)
            if pixels.shape[:2] != (self.size, self.size):
                pixels = self.fit(v2.functional.to_image(pixels)).permute(1, 2, 0).numpy()
            batch[k] = pixels
        return batch


class _RandomResizedCrop:
    """`RandomResizedCrop` as FFCV's decoder does it: the same crop draws, then OpenCV's INTER_AREA resize."""

    def __init__(self, op: RandomResizedCrop):
        self.size = op.size
        self.params = (float(op.scale[0]), float(op.scale[1]), float(np.log(op.ratio[0])), float(np.log(op.ratio[1])))

    def __call__(self, images: list, indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
        keys = sample_keys(indices, seed, SALT_CROP, epoch)
        batch = np.empty((len(images), self.size, self.size, 3), dtype=np.uint8)
        for k, image in enumerate(images):
            pixels = np.asarray(image)
            i, j, h, w = random_resized_crop(keys[k], pixels.shape[0], pixels.shape[1], *self.params)
            batch[k] = cv2.resize(pixels[i : i + h, j : j + w], (self.size, self.size), interpolation=cv2.INTER_AREA)
        return batch


def _sizing(sizing: Sizing):
    """(source images, dataset indices, seed, epoch) -> NHWC uint8 batch."""
    match sizing:
        case AsIs(size):
            return _AsIs(size)
        case RandomResizedCrop():
            return _RandomResizedCrop(sizing)
    raise TypeError(f"{sizing!r} is not a training sizing step of the torchvision loader")


class _KernelBatch:
    """A `KernelOp`'s per-sample kernel (`data/ops/`) over a batch, in place: what FFCV's `SeededImageOp`
    runs in its parallel loop."""

    def __init__(self, op: KernelOp):
        self.kernel, self.salt = kernel_of(op)
        self.params, self.fill = frozen(np.float64(op.params())), frozen(np.uint8(fill_of(op)))

    def __call__(self, batch: np.ndarray, indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
        keys = sample_keys(indices, seed, self.salt, epoch)
        scratch = np.empty_like(batch[0])
        for i in range(len(batch)):
            self.kernel(batch[i], scratch, keys[i], self.params, self.fill)
        return batch


def _pixel_op(op: PixelOp):
    """(NHWC uint8 batch, dataset indices, seed, epoch) -> batch; may work in place."""
    if isinstance(op, KernelOp):
        return _KernelBatch(op)
    match op:
        case Flip(alternate):
            return partial(flip_batch, alternate=alternate)
        case Translate(padding, fill, reflect):
            return partial(translate_batch, pad=padding, fill=frozen(np.uint8(fill)), reflect=reflect)
        case Cutout(size, fill):
            return partial(cutout_batch, size=size, fill=frozen(np.uint8(fill)))
    raise TypeError(f"no torchvision implementation of {op!r}")


class TrainTransform:
    """A training `Recipe` on one batch: source images (PIL or HWC arrays) -> NCHW uint8 (channels-last memory)."""

    def __init__(self, recipe: Recipe, seed: int):
        self.seed = seed
        self.sizing = _sizing(recipe.sizing)
        self.ops = [_pixel_op(op) for op in recipe.ops]

    def __call__(self, images: list, indices: Sequence[int], epoch: int) -> torch.Tensor:
        indices = frozen(np.uint64(indices))
        batch = self.sizing(images, indices, self.seed, epoch)
        for op in self.ops:
            batch = op(batch, indices, self.seed, epoch)
        return torch.from_numpy(batch).permute(0, 3, 1, 2)


class EvalTransform:
    """An evaluation `Recipe` (no random op), image by image: source images -> NCHW uint8. The per-image step is
    `preprocess.EvalPreprocess`, which python -m visiontrain predict applies to image files."""

    def __init__(self, recipe: Recipe):
        self.preprocess = EvalPreprocess.from_recipe(recipe)

    def __call__(self, images: list) -> torch.Tensor:
        return self.preprocess.batch(images)


class BatchDataset(Dataset):
    """Whole batches of sampler items -> (NCHW uint8 images, labels, valid).

    Items are (index, epoch, copy) for training (`ResumableDistributedSampler`) and (index, valid)
    for evaluation (`EvalShardSampler`, whose padding is not valid).
    """

    def __init__(self, source: SampleSource, transform: TrainTransform | EvalTransform):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitems__(self, items: list[tuple]):
        indices = [item[0] for item in items]
        images = [self.source.load(index) for index in indices]
        labels = torch.tensor([self.source.labels[index] for index in indices])
        if isinstance(self.transform, TrainTransform):  # (index, epoch, copy): a repeated copy draws its own
            keys = [copy_key(index, copy, len(self.source)) for index, _, copy in items]
            return self.transform(images, keys, epoch=items[0][1]), labels, torch.ones(len(items), dtype=torch.bool)
        return self.transform(images), labels, torch.tensor([valid for _, valid in items])


def _whole_batch(batch):
    return batch  # `__getitems__` made the batch; nothing to collate


class HeldBatches:
    """A batch sampler that yields nothing while held: a pass over the loader then starts its
    workers without handing them work (the epoch and start position are not known yet)."""

    def __init__(self, batches: BatchSampler):
        self.batches, self.held = batches, True

    def __iter__(self):
        return iter(()) if self.held else iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(dataset: BatchDataset, batches: BatchSampler, num_workers: int, pin: bool) -> DataLoader:
    """A DataLoader whose persistent workers are already running.

    They start here, while the process has no helper threads yet: at the first epoch or
    evaluation it would run TensorBoard's writer, the progress bar's monitor, the other
    loader's queue feeders and CUDA's pin-memory thread, and a process forked while threads
    run can inherit a lock that no thread of its own will release (a rank then waits forever
    for its worker). The later passes reuse these workers (persistent_workers).
    """
    held = HeldBatches(batches)
    loader = DataLoader(
        dataset,
        batch_sampler=held if num_workers > 0 else batches,
        collate_fn=_whole_batch,
        num_workers=num_workers,
        pin_memory=pin,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    if num_workers > 0:
        with torch.random.fork_rng(devices=[]):  # the workers' seed draw must not shift the model's initialization
            for _ in loader:
                raise AssertionError("a held sampler hands the workers no work")
        held.held = False
    return loader


@contextmanager
def one_line_worker_errors() -> Iterator[None]:
    """A DataLoader worker's UsageError arrives with the worker's traceback in its message: keep its last line."""
    try:
        yield
    except UsageError as err:
        last = str(err).strip().splitlines()[-1]
        raise UsageError(last.partition("UsageError: ")[2] or last) from None


class TorchvisionTrainLoader(SampledTrainLoader):
    def __init__(self, loader: DataLoader, sampler: ResumableDistributedSampler, normalize: DeviceNormalizer,
                 relabel: Relabel, plan: BatchPlan):
        super().__init__(sampler, plan)
        self.loader, self.normalize, self.relabel = loader, normalize, relabel

    def __iter__(self):
        device = self.normalize.device
        with one_line_worker_errors():
            for images, labels, _ in islice(self.loader, self._remaining):
                yield self.normalize(images), self.relabel(labels.to(device, non_blocking=True))


class TorchvisionEvalLoader:
    def __init__(self, loader: DataLoader, sampler: EvalShardSampler, num_samples: int, normalize: DeviceNormalizer,
                 relabel: Relabel):
        self.loader, self.num_samples, self.normalize, self.relabel = loader, num_samples, normalize, relabel
        self.sample_indices = list(sampler.indices)

    def __iter__(self):
        device = self.normalize.device
        with one_line_worker_errors():
            for images, labels, valid in self.loader:
                yield (self.normalize(images), self.relabel(labels.to(device, non_blocking=True)),
                       valid.to(device, non_blocking=True))


def build_torchvision_data(cfg: Config, runtime: Runtime, plan: BatchPlan, train: bool = True,
                           eval_split: str = "val") -> DataBundle:
    d = cfg.data
    path = Path(d.path)
    train_src, val_src = open_sources(path)
    if eval_split == "train":  # the training selection, read by the eval loader
        chosen = select(d, train_src.class_names, train_src.labels, [])
        eval_src, eval_indices = train_src, chosen.train_indices
    else:
        chosen = select(d, train_src.class_names, train_src.labels if train else None, val_src.labels)
        eval_src, eval_indices = val_src, chosen.val_indices
    check_num_classes(cfg.model.num_classes, chosen.class_names, path, d)
    relabel = Relabel(chosen.label_map, runtime.device)
    normalize = DeviceNormalizer(d.mean, d.std, runtime.device, cfg.model.channels_last)
    pin = runtime.device.type == "cuda"
    val_sampler = EvalShardSampler(eval_indices, runtime.world_size, runtime.rank)
    val = TorchvisionEvalLoader(
        make_loader(BatchDataset(eval_src, EvalTransform(augment.eval_recipe(d))),
                    BatchSampler(val_sampler, plan.micro_batch, drop_last=False), d.num_workers, pin),
        val_sampler, len(eval_indices), normalize, relabel)
    train_loader = None
    if train:
        sampler = ResumableDistributedSampler(chosen.train_indices, runtime.world_size, runtime.rank, cfg.run.seed,
                                              cfg.augment.repeats)
        transform = TrainTransform(augment.train_recipe(d, cfg.augment), cfg.run.seed)
        loader = make_loader(BatchDataset(train_src, transform),
                             BatchSampler(sampler, plan.micro_batch, drop_last=True), d.num_workers, pin)
        train_loader = TorchvisionTrainLoader(loader, sampler, normalize, relabel, plan)
    return DataBundle(train_loader, val, len(chosen.class_names), chosen.class_names, len(chosen.train_indices))
