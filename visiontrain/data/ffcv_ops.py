"""FFCV operations for the recipe ops of `augment.py`, with reproducible randomness.

FFCV's own random operations draw from numba's global generator, which is seeded
from system entropy per thread: two runs (or a run and its resumption) augment
differently. These operations draw from `draws.py`'s hash instead and run the
per-sample kernels of `kernels.py` in FFCV's parallel loop, so they produce exactly the pixels of the
torchvision loader. Semantics follow FFCV's operations of the same name.

FFCV tells an operation which samples its batch holds, not the epoch. The loader writes
the epoch into an `EpochCell` before each epoch; the compiled operations read it from
there (numba freezes captured arrays into constants, so they read the cell's address).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Tuple

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from visiontrain.data.draws import (
    SALT_CROP,
    SALT_CUTOUT,
    SALT_TRANSLATE,
    flip_decisions,
    frozen,
    random_resized_crop,
    sample_keys,
)
from visiontrain.data.jit import kernel
from visiontrain.data.kernels import cutout, flip_into, translate


class EpochCell:
    """The epoch the FFCV pipeline is producing, shared by a loader and its operations."""

    def __init__(self):
        self._value = np.zeros(1, dtype=np.int64)
        self.address = self._value.ctypes.data  # valid as long as this object lives: the operations hold it

    def set(self, epoch: int) -> None:
        self._value[0] = epoch


@intrinsic
def _load_int64(typingctx, address):
    def codegen(context, builder, signature, args):
        return builder.load(builder.inttoptr(args[0], ir.IntType(64).as_pointer()))

    return types.int64(types.intp), codegen


@kernel(cache=False)
def read_int64(address):
    """The int64 at `address`, read each time it is called (not frozen at compile time)."""
    return _load_int64(address)


def _jitted(previous_state: State, allocation=None):
    return replace(previous_state, jit_mode=True), allocation


class SeededFlip(Operation):
    """Horizontal flip with probability 1/2 (FFCV's RandomHorizontalFlip), or alternating (`flip_decisions`)."""

    def __init__(self, seed: int, epoch: EpochCell, alternate: bool = False):
        super().__init__()
        self.seed, self.epoch, self.alternate = seed, epoch, alternate

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        seed, epoch_address, alternate = self.seed, self.epoch.address, self.alternate

        def flip(images, dst, indices):
            flips = flip_decisions(indices, seed, read_int64(epoch_address), alternate)
            for i in my_range(images.shape[0]):
                flip_into(images[i], dst[i], flips[i])
            return dst[: images.shape[0]]

        flip.is_parallel = True
        flip.with_indices = True
        return flip

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, AllocationQuery | None]:
        return _jitted(previous_state, AllocationQuery(previous_state.shape, previous_state.dtype))


class SeededTranslate(Operation):
    """Shift by up to `padding` pixels each way, filling with `fill` (FFCV's RandomTranslate) or, with
    `reflect`, with the image mirrored at its border."""

    def __init__(self, padding: int, fill: tuple[int, int, int], seed: int, epoch: EpochCell, reflect: bool = False):
        super().__init__()
        self.padding, self.fill, self.seed, self.epoch = padding, frozen(np.uint8(fill)), seed, epoch
        self.reflect = reflect

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        pad, fill, seed, epoch_address, reflect = self.padding, self.fill, self.seed, self.epoch.address, self.reflect

        def shift(images, padded, indices):
            keys = sample_keys(indices, seed, SALT_TRANSLATE, read_int64(epoch_address))
            for i in my_range(images.shape[0]):
                translate(images[i], padded[i], keys[i], pad, fill, reflect)
            return images

        shift.is_parallel = True
        shift.with_indices = True
        return shift

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, AllocationQuery | None]:
        h, w, c = previous_state.shape
        return _jitted(previous_state, AllocationQuery((h + 2 * self.padding, w + 2 * self.padding, c),
                                                       previous_state.dtype))


class SeededCutout(Operation):
    """Fill one `size` x `size` square lying inside the image with `fill` (FFCV's Cutout)."""

    def __init__(self, size: int, fill: tuple[int, int, int], seed: int, epoch: EpochCell):
        super().__init__()
        self.size, self.fill, self.seed, self.epoch = size, frozen(np.uint8(fill)), seed, epoch

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        size, fill, seed, epoch_address = self.size, self.fill, self.seed, self.epoch.address

        def paint(images, _, indices):
            keys = sample_keys(indices, seed, SALT_CUTOUT, read_int64(epoch_address))
            for i in my_range(images.shape[0]):
                cutout(images[i], keys[i], size, fill)
            return images

        paint.is_parallel = True
        paint.with_indices = True
        return paint

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, AllocationQuery | None]:
        return _jitted(previous_state)


class SeededImageOp(Operation):
    """A per-sample kernel of `data/ops/` (`kernel(image, scratch, key, params, fill)`, in place) in FFCV's
    parallel loop: RandAugment, TrivialAugment, 3-Augment, colour jitter, random erasing."""

    def __init__(self, kernel: Callable, salt: int, params, fill: tuple[int, int, int], seed: int,
                 epoch: EpochCell):
        super().__init__()
        self.kernel, self.salt, self.seed, self.epoch = kernel, salt, seed, epoch
        self.params, self.fill = frozen(np.float64(params)), frozen(np.uint8(fill))

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        kernel, salt, params, fill = self.kernel, self.salt, self.params, self.fill
        seed, epoch_address = self.seed, self.epoch.address

        def run(images, scratch, indices):
            keys = sample_keys(indices, seed, salt, read_int64(epoch_address))
            for i in my_range(images.shape[0]):
                kernel(images[i], scratch[i], keys[i], params, fill)
            return images

        run.is_parallel = True
        run.with_indices = True
        return run

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, AllocationQuery | None]:
        return _jitted(previous_state, AllocationQuery(previous_state.shape, previous_state.dtype))


class SeededRandomResizedCropDecoder(ResizedCropRGBImageDecoder):
    """Decode + RandomResizedCrop(scale, ratio) + resize to `output_size`, in one pass.

    `output_size` may be changed between epochs (progressive resizing): FFCV re-sizes
    its buffers at the start of every epoch.
    """

    def __init__(self, output_size: tuple[int, int], seed: int, epoch: EpochCell, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3)):
        super().__init__(output_size)
        self.seed, self.epoch, self.scale, self.ratio = seed, epoch, scale, ratio

    def generate_code(self) -> Callable:
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        seed, epoch_address = self.seed, self.epoch.address
        scale_lo, scale_hi = float(self.scale[0]), float(self.scale[1])
        log_ratio_lo, log_ratio_hi = float(np.log(self.ratio[0])), float(np.log(self.ratio[1]))

        def decode(batch_indices, buffers, metadata, storage_state):
            destination, scratch = buffers
            keys = sample_keys(batch_indices, seed, SALT_CROP, read_int64(epoch_address))
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
