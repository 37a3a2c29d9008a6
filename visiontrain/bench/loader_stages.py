"""Each data-loading stage alone, on one core, the loaders idle: FFCV's JPEG decode, crop + resize and flip as
its decoder runs them; torchvision's file read + decode and crop + resize + flip; the normalization
(DeviceNormalizer, and torch's formula for reference). Part of `bench loader`'s profile."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


def _us_per_image(fn, images: int, repeats: int = 5) -> float:
    fn()  # compilation, first-touch allocations
    best = min(_seconds(fn) for _ in range(repeats))
    return best / images * 1e6


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def normalization_costs(normalize, batch: int, res: int) -> dict[str, float]:
    """Microseconds per image of a loader's normalizer, and of torch's formula it replaces (for reference), on one
    channels-last uint8 batch as the loaders hand it over."""
    images = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8).contiguous(
        memory_format=torch.channels_last)
    images = images.to(normalize.device)

    def formula():
        return images.float().mul_(normalize.scale).add_(normalize.bias)

    def synced(fn):
        def timed():
            fn()
            if images.is_cuda:
                torch.cuda.synchronize()
        return timed

    return {"normalize": _us_per_image(synced(lambda: normalize(images)), batch),
            "torch_formula": _us_per_image(synced(formula), batch)}


def spread(count: int, size: int) -> np.ndarray:
    """`count` sample indices evenly over a dataset of `size` (the replicas of one photo are neighbours)."""
    return np.unique(np.linspace(0, size - 1, min(count, size)).astype(np.uint64))


def ffcv_stage_costs(beton: Path, decoder, images: int = 256) -> dict[str, float]:
    """Microseconds per image, on one core, of the stages of FFCV's training pipeline: the JPEG decode and the
    crop + resize (`SeededRandomResizedCropDecoder`, the same draws), then the flip (`SeededFlip`'s kernel)."""
    from ffcv.libffcv import imdecode, resize_crop
    from ffcv.reader import Reader

    from visiontrain.data.draws import SALT_CROP, frozen, random_resized_crop, sample_keys
    from visiontrain.data.kernels import flip_batch

    reader = Reader(str(beton))
    indices = frozen(spread(images, reader.num_samples))
    fields = reader.metadata[f"f{reader.field_names.index('image')}"][indices]
    table = np.sort(reader.alloc_table, order="ptr")
    data = np.memmap(beton, dtype=np.uint8, mode="r")
    samples = []
    for field in fields:
        row = table[np.searchsorted(table["ptr"], field["data_ptr"])]
        samples.append((np.array(data[row["ptr"] : row["ptr"] + row["size"]]), int(field["height"]),
                        int(field["width"])))
    keys = sample_keys(indices, decoder.seed, SALT_CROP, 1)
    params = (float(decoder.scale[0]), float(decoder.scale[1]), float(np.log(decoder.ratio[0])),
              float(np.log(decoder.ratio[1])))
    crops = [random_resized_crop(keys[k], h, w, *params) for k, (_, h, w) in enumerate(samples)]
    scratch = np.empty(max(h * w * 3 for _, h, w in samples), dtype=np.uint8)
    batch = np.empty((len(samples), *decoder.output_size, 3), dtype=np.uint8)
    decoded = []
    for raw, h, w in samples:
        imdecode(raw, scratch, h, w, h, w, 0, 0, 1, 1, False, False)
        decoded.append(scratch[: h * w * 3].reshape(h, w, 3).copy())

    def decode():
        for raw, h, w in samples:
            imdecode(raw, scratch, h, w, h, w, 0, 0, 1, 1, False, False)

    def crop_resize():
        for k, (pixels, (i, j, h, w)) in enumerate(zip(decoded, crops)):
            resize_crop(pixels, i, i + h, j, j + w, batch[k])

    return {"jpeg_decode": _us_per_image(decode, len(samples)),
            "crop_resize": _us_per_image(crop_resize, len(samples)),
            "flip": _us_per_image(lambda: flip_batch(batch, indices, decoder.seed, 1, False), len(samples))}


def torchvision_stage_costs(loader, images: int = 256) -> dict[str, float]:
    """Microseconds per image, on one core, of a torchvision training batch: read + decode of the files, then the
    recipe (crop + resize + flip) on the batch."""
    dataset = loader.loader.dataset
    indices = spread(images, len(dataset)).tolist()
    decoded = [dataset.source.load(i) for i in indices]
    return {"read_decode": _us_per_image(lambda: [dataset.source.load(i) for i in indices], len(indices)),
            "crop_resize_flip": _us_per_image(lambda: dataset.transform(decoded, indices, epoch=1), len(indices))}
