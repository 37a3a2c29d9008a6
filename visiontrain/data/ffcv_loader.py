"""The FFCV loader: train.beton / val.beton / meta.json written by `python -m visiontrain prep`.

Same contract as the torchvision loader:
- Data order: the same per-epoch permutation and rank split (torch's DistributedSampler
  with drop_last; no sample twice in an epoch), able to start mid-epoch on resume. It
  reaches FFCV as a custom TraversalOrder.
- Augmentation: the recipes of `augment.py`, each op mapped to a seeded FFCV operation
  (`ffcv_ops`) that produces the torchvision loader's pixels.
- Output: uint8 pixels, normalized to float on the device, channels-last if asked.
- Evaluation: padded equal shards with padding masked out.
Progressive resizing (imagenet recipe) changes the decoder's output size each epoch.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, SimpleRGBImageDecoder
from ffcv.loader import Loader
from ffcv.loader import loader as ffcv_loader_module
from ffcv.reader import Reader
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage
from ffcv.traversal_order.base import TraversalOrder
from ffcv.types import CURRENT_VERSION, HeaderType

from visiontrain.config import Config, DataConfig
from visiontrain.data import augment
from visiontrain.data.augment import (
    AsIs,
    Cutout,
    Flip,
    KernelOp,
    PixelOp,
    RandomResizedCrop,
    ResizeCenterCrop,
    Sizing,
    Translate,
    resolution_for_epoch,
)
from visiontrain.data.base import DataBundle, DeviceNormalizer, SampledTrainLoader
from visiontrain.data.ffcv_ops import (
    EpochCell,
    SeededCutout,
    SeededFlip,
    SeededImageOp,
    SeededRandomResizedCropDecoder,
    SeededTranslate,
)
from visiontrain.data.ops import fill_of, kernel_of
from visiontrain.data.sampling import ResumableDistributedSampler, copy_key, eval_shard
from visiontrain.data.subset import Relabel, check_num_classes, select
from visiontrain.infra import fileio
from visiontrain.infra.errors import UsageError
from visiontrain.parallel import threads
from visiontrain.parallel.batch_plan import BatchPlan
from visiontrain.parallel.runtime import Runtime

log = logging.getLogger(__name__)


class FixedOrder(TraversalOrder):
    """A TraversalOrder computed by us. FFCV calls the instance with its Loader."""

    def __init__(self, order_for_epoch: Callable[[int], np.ndarray]):
        self.order_for_epoch = order_for_epoch

    def __call__(self, loader) -> FixedOrder:
        super().__init__(loader)
        return self

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.order_for_epoch(epoch)


def decoder_for(sizing: Sizing, seed: int, epoch: EpochCell):
    match sizing:
        case AsIs():
            return SimpleRGBImageDecoder()
        case ResizeCenterCrop(size, ratio):
            return CenterCropRGBImageDecoder((size, size), ratio=ratio)
        case RandomResizedCrop(size, scale, ratio):
            return SeededRandomResizedCropDecoder((size, size), seed, epoch, scale, ratio)
    raise TypeError(f"no FFCV decoder for {sizing!r}")


def operation_for(op: PixelOp, seed: int, epoch: EpochCell):
    if isinstance(op, KernelOp):
        kernel, salt = kernel_of(op)
        return SeededImageOp(kernel, salt, op.params(), fill_of(op), seed, epoch)
    match op:
        case Flip(alternate):
            return SeededFlip(seed, epoch, alternate)
        case Translate(padding, fill, reflect):
            return SeededTranslate(padding, fill, seed, epoch, reflect)
        case Cutout(size, fill):
            return SeededCutout(size, fill, seed, epoch)
    raise TypeError(f"no FFCV operation for {op!r}")


def _device_ops(device: torch.device) -> list:
    return [ToDevice(device, non_blocking=True)] if device.type == "cuda" else []


_threads_noted: set[tuple[int, int]] = set()


def decoding_threads(num_workers: int) -> int:
    """FFCV decodes in numba threads, and numba starts at most NUMBA_NUM_THREADS (the CPU cores) of them. A
    config written for a large node still runs on a workstation: the count only sets the speed (each sample's
    augmentation draws are keyed by its index, not by the thread that decodes it), so use what there is and
    say so once."""
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    if num_workers > limit and (num_workers, limit) not in _threads_noted:
        _threads_noted.add((num_workers, limit))
        log.warning("data.num_workers %d: the FFCV loader decodes in numba threads, at most %d on this machine "
                    "(its CPU cores, or NUMBA_NUM_THREADS); using %d", num_workers, limit, limit)
    return min(num_workers, limit)


@contextmanager
def _rows_repeated(copies: int) -> Iterator[None]:
    """Loaders made inside read a .beton's metadata rows `copies` times over: row i + c N describes sample i's
    bytes, so copy c of a sample is fetched by its own index, which keys its own augmentation draws
    (repeated augmentation). FFCV's reader is swapped only while a Loader is made; the OS-cache reads follow
    each row's data pointer, so the copies read the same bytes."""
    if copies == 1:
        yield
        return

    class RepeatedRows(Reader):
        def read_metadata(self) -> None:
            super().read_metadata()
            self.metadata = np.tile(self.metadata, copies)
            self.metadata.setflags(write=False)

    original = ffcv_loader_module.Reader
    ffcv_loader_module.Reader = RepeatedRows
    try:
        yield
    finally:
        ffcv_loader_module.Reader = original


def _loader(path: Path, d: DataConfig, device: torch.device, micro_batch: int, image_ops: list, order: FixedOrder,
            drop_last: bool, copies: int = 1) -> Loader:
    device_ops = _device_ops(device)
    with _rows_repeated(copies):
        loader = _new_loader(path, d, micro_batch, image_ops, device_ops, order, drop_last)
    threads.restore()  # FFCV sets torch's thread count to its own
    _reuse_batch_buffers(loader)
    return loader


def _new_loader(path: Path, d: DataConfig, micro_batch: int, image_ops: list, device_ops: list, order: FixedOrder,
                drop_last: bool) -> Loader:
    return Loader(
        str(path), batch_size=micro_batch, num_workers=decoding_threads(max(1, d.num_workers)),
        os_cache=d.os_cache, order=order, drop_last=drop_last, batches_ahead=d.batches_ahead,
        pipelines={"image": image_ops + [ToTensor()] + device_ops + [ToTorchImage(channels_last=True)],
                   "label": [IntDecoder(), ToTensor(), Squeeze()] + device_ops})


def _reuse_batch_buffers(loader: Loader) -> None:
    """Keep FFCV's batch buffers from one epoch to the next while their shapes stay the same.

    FFCV's EpochIterator allocates every operation's buffers anew for each epoch: fresh pages
    that the decoders then fault in, about 90 us per image more on a buffer's first write, over
    25 us per image averaged over a 5,000-image epoch. Reuse is safe here because each epoch is
    read to its end before the next one starts, and batches leave the loader as new tensors
    (DeviceNormalizer), never as views on these buffers. A new resolution (progressive
    resizing) changes the requested shapes and gets new buffers.
    """
    graph, allocate = loader.graph, loader.graph.allocate_memory
    kept: dict[str, object] = {}

    def allocate_once(batch_size: int, batches_ahead: int):
        requirements, _ = graph.collect_requirements()
        key = repr((batch_size, batches_ahead, sorted((kind, sorted(queries.items())) for kind, queries
                                                      in requirements.items())))
        if key not in kept:
            kept.clear()
            kept[key] = allocate(batch_size, batches_ahead)
        return kept[key]

    graph.allocate_memory = allocate_once


class FFCVTrainLoader(SampledTrainLoader):
    def __init__(self, cfg: Config, runtime: Runtime, path: Path, indices: list[int], relabel: Relabel,
                 plan: BatchPlan):
        d, seed, copies = cfg.data, cfg.run.seed, cfg.augment.repeats
        super().__init__(ResumableDistributedSampler(indices, runtime.world_size, runtime.rank, seed, copies), plan)
        self.data_cfg, self.relabel = d, relabel
        # The samples in the file: copy c of sample i is its row i + c N (repeated augmentation)
        self.dataset_size = int(np.fromfile(path, dtype=HeaderType, count=1)[0]["num_samples"])
        self.normalize = DeviceNormalizer(d.mean, d.std, runtime.device, cfg.model.channels_last)
        recipe = augment.train_recipe(d, cfg.augment)
        self.epoch = EpochCell()
        self.decoder = decoder_for(recipe.sizing, seed, self.epoch)
        self.loader = _loader(path, d, runtime.device, plan.micro_batch,
                              [self.decoder] + [operation_for(op, seed, self.epoch) for op in recipe.ops],
                              FixedOrder(self._order), drop_last=True, copies=copies)

    def _order(self, epoch: int) -> np.ndarray:
        # Exactly the samples of the batches to train on: FFCV then ends its epoch by itself. Breaking out of
        # its iteration instead would leave its prefetching thread, and the batches it holds, alive for good.
        self.sampler.set_epoch(epoch, self.sampler.start)
        order = np.array([copy_key(index, copy, self.dataset_size) for index, _, copy in self.sampler],
                         dtype=np.uint64)
        return order[: self._remaining * self.micro_batch]

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch, start)
        self.loader.next_epoch = epoch
        self.epoch.set(epoch)
        if isinstance(self.decoder, SeededRandomResizedCropDecoder):
            res = resolution_for_epoch(epoch, self.data_cfg)
            self.decoder.output_size = (res, res)

    def __iter__(self):
        device = self.normalize.device
        for count, (images, labels) in enumerate(self.loader):
            if count == 0:
                threads.restore()  # FFCV's epoch thread set torch's intra-op threads to its worker count
            yield self.normalize(images), self.relabel(labels.to(device, dtype=torch.long, copy=True))


class FFCVEvalLoader:
    def __init__(self, cfg: Config, runtime: Runtime, path: Path, samples: list[int], relabel: Relabel,
                 micro_batch: int):
        d = cfg.data
        self.num_samples, self.relabel = len(samples), relabel
        indices, valid = eval_shard(samples, runtime.world_size, runtime.rank)
        self.order = np.array(indices, dtype=np.uint64)
        self.sample_indices = list(indices)
        self.valid = torch.tensor(valid, dtype=torch.bool, device=runtime.device)
        self.micro_batch = micro_batch
        self.normalize = DeviceNormalizer(d.mean, d.std, runtime.device, cfg.model.channels_last)
        recipe = augment.eval_recipe(d)  # no random op: no seed
        self.loader = _loader(path, d, runtime.device, micro_batch, [decoder_for(recipe.sizing, 0, EpochCell())],
                              FixedOrder(lambda epoch: self.order), drop_last=False)

    def __iter__(self):
        device = self.normalize.device
        for batch, (images, labels) in enumerate(self.loader):
            if batch == 0:
                threads.restore()
            start = batch * self.micro_batch
            valid = self.valid[start : start + images.shape[0]]
            yield self.normalize(images), self.relabel(labels.to(device, dtype=torch.long, copy=True)), valid


def _missing(path: Path, name: str) -> UsageError:
    if name == "meta.json":  # the betons are there (they are checked first): written by another program
        return UsageError(f"no meta.json in data.path={path} (data.loader=ffcv) beside its .beton files; write it "
                          f"with `python -m visiontrain prep describe --beton {path} [--class-names FILE]`")
    hint = (f"python -m visiontrain prep cifar10 --out {path}" if path.name == "cifar10"
            else f"python -m visiontrain prep {{cifar10,imagenet,folder}} ... --out {path}")
    return UsageError(f"no {name} in data.path={path} (data.loader=ffcv); create it with `{hint}`")


def build_ffcv_data(cfg: Config, runtime: Runtime, plan: BatchPlan, train: bool = True,
                    eval_split: str = "val") -> DataBundle:
    d = cfg.data
    path = Path(d.path)
    splits = ("train", "val") if train else (eval_split,)
    files = {name: path / name for name in [f"{split}.beton" for split in splits] + ["meta.json"]}
    class_names = check_dataset_files(path, d, splits)
    labels = {split: beton_labels(files[f"{split}.beton"], len(class_names)) for split in splits}
    if eval_split == "train":  # the training selection, read by the eval loader
        chosen = select(d, class_names, labels["train"], [])
        eval_file, eval_indices = files["train.beton"], chosen.train_indices
    else:
        chosen = select(d, class_names, labels.get("train"), labels["val"])
        eval_file, eval_indices = files["val.beton"], chosen.val_indices
    check_num_classes(cfg.model.num_classes, chosen.class_names, path, d)
    relabel = Relabel(chosen.label_map, runtime.device)
    train_loader = None
    if train:
        train_loader = FFCVTrainLoader(cfg, runtime, files["train.beton"], chosen.train_indices, relabel, plan)
    return DataBundle(
        train_loader, FFCVEvalLoader(cfg, runtime, eval_file, eval_indices, relabel, plan.micro_batch),
        len(chosen.class_names), chosen.class_names, len(chosen.train_indices),
    )


def check_dataset_files(path: Path, d: DataConfig, splits: tuple[str, ...]) -> list[str]:
    """The class names of a `visiontrain prep` output at `path`, after checking that its files exist and that images the
    recipe reads as stored have the configured size (meta.json records the sizes): one line otherwise."""
    files = {name: path / name for name in [f"{split}.beton" for split in splits] + ["meta.json"]}
    for name, file in files.items():
        if not file.is_file():
            raise _missing(path, name)
    meta = fileio.read_json(files["meta.json"], "dataset description")
    class_names = meta.get("class_names") if isinstance(meta, dict) else None
    if not isinstance(class_names, list) or len(class_names) < 2:
        raise UsageError(f"{files['meta.json']} names no class list (class_names, at least 2); write the dataset "
                         "again with python -m visiontrain prep")
    for split in splits:
        sizing = (augment.train_recipe(d) if split == "train" else augment.eval_recipe(d)).sizing
        size = meta.get("splits", {}).get(split, {}).get("image_size", {})
        sides = {size.get(k, {}).get(e) for k in ("width", "height") for e in ("min", "max")}
        if isinstance(sizing, AsIs) and sides != {sizing.size}:
            raise UsageError(f"data.recipe={d.recipe} reads {split}.beton images as they are, but they are not all "
                             f"{sizing.size}x{sizing.size} (data.image_size / data.val_image_size); sizes seen: "
                             f"{sorted(s for s in sides if s is not None)}; use data.recipe=imagenet to crop")
    return class_names


def open_beton(path: Path, remedy: str) -> Reader:
    """FFCV's Reader of `path` after the checks that cost nothing: a readable header and whole tables.
    Otherwise one line that ends with `remedy`."""
    size = path.stat().st_size
    try:
        reader = Reader(str(path))
    except Exception as err:  # a damaged header fails in numpy or in FFCV's field parsing
        header = np.fromfile(path, dtype=HeaderType, count=1)
        # A file cut short (an interrupted copy) has a whole header that points past its end.
        if len(header) and header[0]["version"] == CURRENT_VERSION and int(header[0]["alloc_table_ptr"]) > size:
            raise UsageError(f"{path} is truncated or damaged ({size} bytes, its sample table announced at byte "
                             f"{int(header[0]['alloc_table_ptr'])}); {remedy}") from None
        raise UsageError(f"{path} is not a readable .beton file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'no detail'}); {remedy}") from None
    table = reader.alloc_table
    if (len(reader.metadata) != reader.num_samples or len(table) == 0
            or int(reader.header["alloc_table_ptr"]) > size or int((table["ptr"] + table["size"]).max()) > size):
        raise UsageError(f"{path} is truncated or damaged ({size} bytes, {reader.num_samples} samples announced); "
                         f"{remedy}")
    return reader


def beton_labels(path: Path, num_classes: int | None = None) -> np.ndarray:
    """Every sample's label, read from the file's metadata table (no image is decoded), after the
    checks that cost nothing: a readable header, whole tables, and labels within meta.json's classes."""
    rewrite = "write the dataset again with python -m visiontrain prep"
    reader = open_beton(path, rewrite)
    if "label" not in reader.field_names:
        raise UsageError(f"{path} has no 'label' field (fields: {', '.join(reader.field_names)}); {rewrite}")
    labels = reader.metadata[f"f{reader.field_names.index('label')}"]
    if num_classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UsageError(f"{path} has labels up to {int(labels.max())} but meta.json names {num_classes} classes; "
                         f"the two files come from different datasets: {rewrite}")
    return labels
