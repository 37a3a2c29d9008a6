"""FFCV augmentations whose randomness is reproducible.

FFCV's own random operations draw from numba's global generator, which is seeded
from system entropy per thread: two runs (or a run and its resumption) augment
differently. These operations draw instead from a counter-based hash (splitmix64) of
(run seed, operation, sample index, batch composition). The batch composition is
fixed by the data order, which is fixed by (seed, epoch), so an epoch replays
exactly, in parallel or not. Semantics follow FFCV's operations of the same name.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional, Tuple

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State
from numba import njit

_U = np.uint64
# Salts keep the draws of different operations independent.
SALT_FLIP, SALT_TRANSLATE, SALT_CUTOUT, SALT_CROP = 1, 2, 3, 4


@njit(inline="always")
def splitmix64(x):
    z = x + _U(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U(30))) * _U(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
    return z ^ (z >> _U(31))


@njit(inline="always")
def uniform(key, draw):
    """The draw-th uniform number in [0, 1) of the stream `key`."""
    return (splitmix64(key + _U(draw)) >> _U(11)) * (1.0 / 9007199254740992.0)


@njit
def sample_keys(indices, seed, salt):
    """One key per sample: hash of (seed, salt, batch composition, sample index)."""
    batch = splitmix64(_U(seed) ^ splitmix64(_U(salt)))
    for i in range(len(indices)):
        batch = splitmix64(batch ^ _U(indices[i]))
    keys = np.empty(len(indices), dtype=np.uint64)
    for i in range(len(indices)):
        keys[i] = splitmix64(batch + splitmix64(_U(indices[i])))
    return keys


def _jitted(previous_state: State, allocation=None):
    return replace(previous_state, jit_mode=True), allocation


class SeededFlip(Operation):
    """Horizontal flip with probability 1/2 (FFCV's RandomHorizontalFlip)."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        seed = self.seed

        def flip(images, dst, indices):
            keys = sample_keys(indices, seed, SALT_FLIP)
            for i in my_range(images.shape[0]):
                if uniform(keys[i], 0) < 0.5:
                    dst[i] = images[i, :, ::-1]
                else:
                    dst[i] = images[i]
            return dst[: images.shape[0]]

        flip.is_parallel = True
        flip.with_indices = True
        return flip

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        return _jitted(previous_state, AllocationQuery(previous_state.shape, previous_state.dtype))


class SeededTranslate(Operation):
    """Shift by up to `padding` pixels each way, filling with `fill` (FFCV's RandomTranslate)."""

    def __init__(self, padding: int, fill: tuple[int, int, int], seed: int):
        super().__init__()
        self.padding, self.fill, self.seed = padding, np.array(fill, dtype=np.uint8), seed

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        pad, fill, seed = self.padding, self.fill, self.seed

        def translate(images, padded, indices):
            keys = sample_keys(indices, seed, SALT_TRANSLATE)
            n, h, w, _ = images.shape
            for i in my_range(n):
                padded[i] = fill
                padded[i, pad : pad + h, pad : pad + w] = images[i]
                dy = min(int(uniform(keys[i], 0) * (2 * pad + 1)), 2 * pad)
                dx = min(int(uniform(keys[i], 1) * (2 * pad + 1)), 2 * pad)
                images[i] = padded[i, dy : dy + h, dx : dx + w]
            return images

        translate.is_parallel = True
        translate.with_indices = True
        return translate

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        h, w, c = previous_state.shape
        return _jitted(previous_state, AllocationQuery((h + 2 * self.padding, w + 2 * self.padding, c),
                                                       previous_state.dtype))


class SeededCutout(Operation):
    """Fill one `size` x `size` square lying inside the image with `fill` (FFCV's Cutout)."""

    def __init__(self, size: int, fill: tuple[int, int, int], seed: int):
        super().__init__()
        self.size, self.fill, self.seed = size, np.array(fill, dtype=np.uint8), seed

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        size, fill, seed = self.size, self.fill, self.seed

        def cutout(images, _, indices):
            keys = sample_keys(indices, seed, SALT_CUTOUT)
            n, h, w, _c = images.shape
            for i in my_range(n):
                top = min(int(uniform(keys[i], 0) * (h - size + 1)), h - size)
                left = min(int(uniform(keys[i], 1) * (w - size + 1)), w - size)
                images[i, top : top + size, left : left + size] = fill
            return images

        cutout.is_parallel = True
        cutout.with_indices = True
        return cutout

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        return _jitted(previous_state)


@njit
def random_resized_crop(key, height, width, scale_lo, scale_hi, log_ratio_lo, log_ratio_hi):
    """torchvision's RandomResizedCrop.get_params, drawing from the stream `key`."""
    area = height * width
    for attempt in range(10):
        target_area = area * (scale_lo + (scale_hi - scale_lo) * uniform(key, 4 * attempt))
        aspect = np.exp(log_ratio_lo + (log_ratio_hi - log_ratio_lo) * uniform(key, 4 * attempt + 1))
        w = int(round(np.sqrt(target_area * aspect)))
        h = int(round(np.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = min(int(uniform(key, 4 * attempt + 2) * (height - h + 1)), height - h)
            j = min(int(uniform(key, 4 * attempt + 3) * (width - w + 1)), width - w)
            return i, j, h, w
    # Fallback: the largest centred crop within the aspect-ratio range.
    in_ratio = width / height
    if in_ratio < np.exp(log_ratio_lo):
        w, h = width, int(round(width / np.exp(log_ratio_lo)))
    elif in_ratio > np.exp(log_ratio_hi):
        h, w = height, int(round(height * np.exp(log_ratio_hi)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class SeededRandomResizedCropDecoder(ResizedCropRGBImageDecoder):
    """Decode + RandomResizedCrop(scale, ratio) + resize to `output_size`, in one pass.

    `output_size` may be changed between epochs (progressive resizing): FFCV re-sizes
    its buffers at the start of every epoch.
    """

    def __init__(self, output_size: tuple[int, int], seed: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        super().__init__(output_size)
        self.seed, self.scale, self.ratio = seed, scale, ratio

    def generate_code(self) -> Callable:
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        seed = self.seed
        scale_lo, scale_hi = float(self.scale[0]), float(self.scale[1])
        log_ratio_lo, log_ratio_hi = float(np.log(self.ratio[0])), float(np.log(self.ratio[1]))

        def decode(batch_indices, buffers, metadata, storage_state):
            destination, scratch = buffers
            keys = sample_keys(batch_indices, seed, SALT_CROP)
            for k in my_range(len(batch_indices)):
                field = metadata[batch_indices[k]]
                data = mem_read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                if field["mode"] == jpg:
                    pixels = scratch[k]
                    imdecode_c(data, pixels, height, width, height, width, 0, 0, 1, 1, False, False)
                    pixels = pixels.reshape(-1)[: 3 * height * width].reshape(height, width, 3)
                else:
                    pixels = data.reshape(height, width, 3)
                i, j, h, w = random_resized_crop(keys[k], int(height), int(width), scale_lo, scale_hi,
                                                 log_ratio_lo, log_ratio_hi)
                resize_crop_c(pixels, i, i + h, j, j + w, destination[k])
            return destination[: len(batch_indices)]

        decode.is_parallel = True
        return decode

    @property
    def get_crop_generator(self):  # the abstract hook of the parent; the crop is drawn in decode
        return None
