"""The device-resident loader (data.loader=device): the whole dataset in the training device's memory.

For datasets that fit (CIFAR-10: 150 MB of uint8 pixels), reading and augmenting on the host is the
bottleneck of a fast step. This loader reads the dataset once at start (N x H x W x 3 uint8 on the
device) and augments each batch there with batched tensor ops: no per-sample Python, no host
threads, no host-to-device copy of pixels during training.

Same contracts as the other loaders, and the same pixels:
- data: what `visiontrain prep` writes (train.beton / val.beton, read through FFCV when it is
  installed), or what the torchvision loader reads (`sources.py`: class folders, CIFAR-10's python
  batches), so it also runs where FFCV's native libraries are missing;
- order: `ResumableDistributedSampler` (each rank its shard, exact mid-epoch start), subsets of
  `data.classes` / `data.train_fraction`, evaluation counting every val sample once (`eval_shard`);
- augmentation: the cifar recipe of `augment.py` (flip, translate, cutout). The random draws are
  `draws.py`'s hash of (seed, op, epoch, sample index), computed on the host once per epoch for
  this rank's samples (a few numbers per sample) and applied on the device, so the batches are
  pixel-identical to the FFCV and torchvision loaders'.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from visiontrain.config import Config
from visiontrain.data import augment
from visiontrain.data.augment import AsIs, Cutout, Flip, Recipe, Translate
from visiontrain.data.base import DataBundle, DeviceNormalizer, SampledTrainLoader
from visiontrain.data.draws import SALT_CUTOUT, SALT_TRANSLATE, flip_decisions, frozen, sample_keys, uniform_ints
from visiontrain.data.sampling import ResumableDistributedSampler, eval_shard
from visiontrain.data.subset import Relabel, check_num_classes, select
from visiontrain.infra.errors import UsageError
from visiontrain.parallel import threads
from visiontrain.parallel.batch_plan import BatchPlan
from visiontrain.parallel.runtime import Runtime

# Room left on the device for the model, activations and the optimizer.
MAX_DEVICE_FRACTION = 0.5


class DeviceAugment:
    """The cifar recipe on a batch held on the device; the draws come from `params`, made on the host."""

    def __init__(self, recipe: Recipe, seed: int, height: int, width: int, device: torch.device):
        if not isinstance(recipe.sizing, AsIs) or any(not isinstance(op, (Flip, Translate, Cutout))
                                                       for op in recipe.ops):
            raise UsageError("data.loader=device implements the cifar recipe (images as stored, flip, translate, "
                             "cutout): use data.recipe=cifar, or data.loader=ffcv for the imagenet recipe")
        self.ops, self.seed, self.height, self.width, self.device = recipe.ops, seed, height, width, device
        # Made once: a tensor built from host values inside the step would wait for the device each time.
        self.rows = torch.arange(height, device=device)
        self.cols = torch.arange(width, device=device)
        self.fills = [torch.tensor(getattr(op, "fill", (0, 0, 0)), dtype=torch.uint8, device=device)
                      for op in recipe.ops]
        self.batch_index = torch.empty(0, dtype=torch.long, device=device)

    def params(self, indices: np.ndarray, epoch: int) -> list[torch.Tensor]:
        """Per op, per sample: the flip flag, the (dy, dx) shift or the cutout's (top, left), on the device."""
        indices = frozen(np.uint64(indices))
        out = []
        for op in self.ops:
            match op:
                case Flip(alternate):
                    drawn = flip_decisions(indices, self.seed, epoch, alternate)
                case Translate(padding):
                    keys = frozen(sample_keys(indices, self.seed, SALT_TRANSLATE, epoch))
                    drawn = uniform_ints(keys, frozen(np.int64([2 * padding, 2 * padding]))) - padding
                case Cutout(size):
                    keys = frozen(sample_keys(indices, self.seed, SALT_CUTOUT, epoch))
                    drawn = uniform_ints(keys, frozen(np.int64([self.height - size, self.width - size])))
            out.append(torch.from_numpy(drawn).to(self.device))
        return out

    def __call__(self, images: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """NHWC uint8 batch -> augmented NHWC uint8 batch (a new tensor)."""
        for op, p, fill in zip(self.ops, params, self.fills):
            match op:
                case Flip():
                    images = torch.where(p.view(-1, 1, 1, 1), images.flip(2), images)
                case Translate(reflect=reflect):
                    images = self._translate(images, p, fill, reflect)
                case Cutout(size):
                    inside = self._box(p[:, 0], p[:, 1], size)
                    images = torch.where(inside[..., None], fill, images)
        return images

    def _translate(self, images: torch.Tensor, shift: torch.Tensor, fill: torch.Tensor, reflect: bool = False
                   ) -> torch.Tensor:
        # Output pixel (y, x) is input (y + dy, x + dx); outside the image, the fill colour or (reflect)
        # the pixel mirrored at the border, as kernels.reflected indexes it.
        rows = self.rows[None, :] + shift[:, :1]  # B x H
        cols = self.cols[None, :] + shift[:, 1:]  # B x W
        if reflect:
            rows = torch.where(rows < 0, -rows, torch.where(rows >= self.height, 2 * (self.height - 1) - rows, rows))
            cols = torch.where(cols < 0, -cols, torch.where(cols >= self.width, 2 * (self.width - 1) - cols, cols))
        if len(self.batch_index) != images.shape[0]:
            self.batch_index = torch.arange(images.shape[0], device=self.device)
        batch = self.batch_index[:, None, None]
        moved = images[batch, rows.clamp(0, self.height - 1)[:, :, None], cols.clamp(0, self.width - 1)[:, None, :]]
        inside = ((rows >= 0) & (rows < self.height))[:, :, None] & ((cols >= 0) & (cols < self.width))[:, None, :]
        return torch.where(inside[..., None], moved, fill)

    def _box(self, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
        rows = (self.rows[None, :] >= top[:, None]) & (self.rows[None, :] < top[:, None] + size)
        cols = (self.cols[None, :] >= left[:, None]) & (self.cols[None, :] < left[:, None] + size)
        return rows[:, :, None] & cols[:, None, :]


class DeviceTrainLoader(SampledTrainLoader):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, sampler: ResumableDistributedSampler,
                 augmentation: DeviceAugment, normalize: DeviceNormalizer, relabel: Relabel, plan: BatchPlan):
        super().__init__(sampler, plan)
        self.images, self.labels, self.augment = images, labels, augmentation
        self.normalize, self.relabel = normalize, relabel

    def __iter__(self):
        epoch, first = self.sampler.epoch, self.batches_per_epoch - self._remaining
        order = np.asarray(self.epoch_indices()[first * self.micro_batch:], dtype=np.int64)
        # One host computation and one copy per epoch; each step only slices device tensors.
        params = self.augment.params(order, epoch)
        order_on_device = torch.from_numpy(order).to(self.normalize.device)
        for b in range(self._remaining):
            batch = slice(b * self.micro_batch, (b + 1) * self.micro_batch)
            picked = order_on_device[batch]
            images = self.augment(self.images[picked], [p[batch] for p in params])
            yield self.normalize(images.permute(0, 3, 1, 2)), self.relabel(self.labels[picked])


class DeviceEvalLoader:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: list[int], valid: list[bool],
                 micro_batch: int, normalize: DeviceNormalizer, relabel: Relabel, num_samples: int):
        device = normalize.device
        self.images, self.labels, self.normalize, self.relabel = images, labels, normalize, relabel
        self.sample_indices, self.num_samples, self.micro_batch = list(indices), num_samples, micro_batch
        self.order = torch.tensor(indices, dtype=torch.long, device=device)
        self.valid = torch.tensor(valid, dtype=torch.bool, device=device)

    def __iter__(self):
        for start in range(0, len(self.order), self.micro_batch):
            picked = self.order[start:start + self.micro_batch]
            yield (self.normalize(self.images[picked].permute(0, 3, 1, 2)), self.relabel(self.labels[picked]),
                   self.valid[start:start + self.micro_batch])


class HostDataset:
    """A dataset read once into host memory: NHWC uint8 pixels at their training / evaluation sizes."""

    def __init__(self, train: np.ndarray | None, train_labels: np.ndarray | None, val: np.ndarray,
                 val_labels: np.ndarray, class_names: list[str]):
        self.train, self.train_labels, self.val, self.val_labels = train, train_labels, val, val_labels
        self.class_names = class_names


def read_betons(path: Path, cfg: Config, train: bool, check: Callable[[int, int], None]) -> HostDataset:
    """train.beton / val.beton as `visiontrain prep` writes them, decoded once in file order after `check` of counts."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    from visiontrain.data.ffcv_loader import beton_labels, check_dataset_files

    splits = ("train", "val") if train else ("val",)
    class_names = check_dataset_files(path, cfg.data, splits)  # files present, images at the configured sizes
    # Its checks (a damaged file is one line) and the sample counts, before anything is decoded.
    counts = {split: len(beton_labels(path / f"{split}.beton", len(class_names))) for split in splits}
    check(counts.get("train", 0), counts["val"])

    def decode(file: Path) -> tuple[np.ndarray, np.ndarray]:
        loader = Loader(str(file), batch_size=1024, num_workers=2, order=OrderOption.SEQUENTIAL, drop_last=False,
                        pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
        images, labels = zip(*[(np.array(x), np.array(y).reshape(-1)) for x, y in loader])
        return np.concatenate(images), np.concatenate(labels).astype(np.int64)

    try:
        train_images, train_labels = decode(path / "train.beton") if train else (None, None)
        return HostDataset(train_images, train_labels, *decode(path / "val.beton"), class_names)
    finally:
        threads.restore()  # FFCV's Loader sets torch's thread count to its worker count


def read_files(path: Path, cfg: Config, train: bool, check: Callable[[int, int], None]) -> HostDataset:
    """Class folders or CIFAR-10 batches (what the torchvision loader reads), decoded and sized once
    (after `check` of the counts)."""
    from visiontrain.data.sources import open_sources
    from visiontrain.data.torch_loader import EvalTransform, TrainTransform

    train_src, val_src = open_sources(path)
    check(len(train_src) if train else 0, len(val_src))
    evaluation = EvalTransform(augment.eval_recipe(cfg.data))
    val = sized(val_src, cfg.data.val_image_size, lambda images, first: evaluation(images))
    train_images = None
    if train:
        sizing = TrainTransform(Recipe(augment.train_recipe(cfg.data).sizing), cfg.run.seed)
        train_images = sized(train_src, cfg.data.image_size,
                             lambda images, first: sizing(images, range(first, first + len(images)), 0))
    return HostDataset(train_images, np.asarray(train_src.labels, dtype=np.int64) if train else None,
                       val, np.asarray(val_src.labels, dtype=np.int64), list(train_src.class_names))


def sized(source, size: int, transform: Callable[[list, int], torch.Tensor], chunk: int = 1024) -> np.ndarray:
    """Every sample of `source` through `transform` (a list of images -> NCHW uint8), a chunk at a time into one
    N x size x size x 3 array: only one chunk of full-resolution decoded images is in memory at once."""
    out = np.empty((len(source), size, size, 3), dtype=np.uint8)
    for first in range(0, len(source), chunk):
        images = [source.load(i) for i in range(first, min(first + chunk, len(source)))]
        out[first:first + len(images)] = transform(images, first).permute(0, 2, 3, 1).numpy()
    return out


def read_dataset(cfg: Config, train: bool, check: Callable[[int, int], None] = lambda n_train, n_val: None
                 ) -> HostDataset:
    path = Path(cfg.data.path)
    if (path / "train.beton").is_file() or (path / "val.beton").is_file():
        try:
            import ffcv  # noqa: F401
        except ImportError:
            ffcv = None
        if ffcv is not None:
            return read_betons(path, cfg, train, check)
        if not (path / "train").is_dir() and not (path / "cifar-10-batches-py").is_dir():
            raise UsageError(f"data.path={path} holds .beton files but FFCV cannot be imported here: install it "
                             "(docs/install.md) or point data.path at class folders or CIFAR-10's python batches")
    return read_files(path, cfg, train, check)


def dataset_bytes(cfg: Config, n_train: int, n_val: int) -> int:
    """Device memory of the dataset: uint8 pixels at the training and evaluation sizes, int64 labels."""
    d = cfg.data
    return n_train * (d.image_size**2 * 3 + 8) + n_val * (d.val_image_size**2 * 3 + 8)


def check_fits(nbytes: int, device: torch.device) -> None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        where = f"{device} ({free / 2**30:.1f} GiB free)"
    else:
        import psutil

        # Every process on this machine holds its own copy.
        copies = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        nbytes *= copies
        free = psutil.virtual_memory().available
        where = f"host memory ({free / 2**30:.1f} GiB available, {copies} process(es) with a copy each)"
    if nbytes > MAX_DEVICE_FRACTION * free:
        raise UsageError(f"data.loader=device needs {nbytes / 2**30:.2f} GiB for the dataset, more than half of "
                         f"{where}: use data.loader=ffcv or torchvision")


def build_device_data(cfg: Config, runtime: Runtime, plan: BatchPlan, train: bool = True) -> DataBundle:
    d, device = cfg.data, runtime.device
    recipe = augment.train_recipe(d)
    # The recipe check first, also for evaluation only (the imagenet recipe resizes at evaluation too).
    DeviceAugment(recipe, cfg.run.seed, d.image_size, d.image_size, torch.device("cpu"))
    host = read_dataset(cfg, train, lambda n_train, n_val: check_fits(dataset_bytes(cfg, n_train, n_val), device))
    chosen = select(d, host.class_names, host.train_labels, host.val_labels)
    check_num_classes(cfg.model.num_classes, chosen.class_names, Path(d.path), d)
    relabel = Relabel(chosen.label_map, device)
    normalize = DeviceNormalizer(d.mean, d.std, device, cfg.model.channels_last)
    indices, valid = eval_shard(chosen.val_indices, runtime.world_size, runtime.rank)
    val = DeviceEvalLoader(torch.from_numpy(host.val).to(device), torch.from_numpy(host.val_labels).to(device),
                           indices, valid, plan.micro_batch, normalize, relabel, len(chosen.val_indices))
    train_loader = None
    if train:
        sampler = ResumableDistributedSampler(chosen.train_indices, runtime.world_size, runtime.rank, cfg.run.seed)
        height, width = host.train.shape[1:3]
        train_loader = DeviceTrainLoader(
            torch.from_numpy(host.train).to(device), torch.from_numpy(host.train_labels).to(device), sampler,
            DeviceAugment(recipe, cfg.run.seed, height, width, device), normalize, relabel, plan)
    return DataBundle(train_loader, val, len(chosen.class_names), chosen.class_names, len(chosen.train_indices))
