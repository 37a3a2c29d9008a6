"""Reproducible random draws for augmentation: the randomness every loader shares.

Every random choice is a pure function of (run seed, operation salt, epoch, sample
index): `sample_keys` hashes them with splitmix64 into one key per sample and
`uniform(key, n)` is the n-th number of that sample's stream. Global generators (numba's
per-thread one in FFCV, torch's in DataLoader workers) depend on thread scheduling and
system entropy instead; these draws replay exactly in a resumed run, with any number of
threads or processes, and are the same in the FFCV, the torchvision and the device loader.
They do not depend on how samples are grouped into batches: accumulated micro-batches
augment exactly like the full batch, and so does another number of processes.

Who uses them: the pixel kernels of `kernels.py` (the two file loaders) draw inside their
per-sample loops; the device loader takes only whole draws (`flip_decisions`,
`uniform_ints`) and applies them on the device. Only numba and numpy here: a machine
without FFCV's native libraries imports this module. Vectors handed to these functions
from outside FFCV must be `frozen` (see there).

numba's cache (`cache=True`) checks only the file a function is defined in, and the
kernels compile the draws they call into themselves: after changing a draw, touch
`kernels.py` and `ops/*.py` (after changing `ops/pixels.py`, the other files of `ops/`),
or their cached kernels keep running the old code.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from visiontrain.data.jit import kernel

_U = np.uint64
# Salts keep the draws of different operations independent.
SALT_FLIP, SALT_TRANSLATE, SALT_CUTOUT, SALT_CROP = 1, 2, 3, 4
SALT_AUTO_AUGMENT, SALT_ERASE, SALT_THREE_AUGMENT, SALT_JITTER = 5, 6, 7, 8


def frozen(values) -> np.ndarray:
    """`values` as a read-only array, the only kind of 1-D array to pass to these functions from outside FFCV.

    FFCV 1.0.2's memory managers set `mutable = False` on numba's shared type objects of writable
    `uint8[::1]` and `uint64[::1]` arrays (`t1.mutable = False` in ffcv/memory_managers): every function
    compiled before for such an array then holds an overload table whose key changed its hash, and the
    next compilation that reads the table fails with a KeyError (an FFCV pipeline thread dies, the loader
    hangs). Read-only arrays are typed with other type objects, which FFCV leaves alone.
    """
    array = np.array(values)
    array.flags.writeable = False
    return array


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


@njit(inline="always")
def uniform_int(key, draw, high):
    """The draw-th integer of the stream `key`, uniform in [0, high]."""
    return min(int(uniform(key, draw) * (high + 1)), high)


@njit(inline="always")
def coin(key):
    """True with probability 1/2: the first draw of the stream `key`."""
    return uniform(key, 0) < 0.5


@kernel
def sample_keys(indices, seed, salt, epoch):
    """One key per sample: a hash of (seed, salt, epoch, sample index)."""
    stream = splitmix64(splitmix64(_U(seed) ^ splitmix64(_U(salt))) ^ splitmix64(_U(epoch) + _U(0x632BE59BD9B4E019)))
    keys = np.empty(len(indices), dtype=np.uint64)
    for i in range(len(indices)):
        keys[i] = splitmix64(stream + splitmix64(_U(indices[i])))
    return keys


@kernel
def random_resized_crop(key, height, width, scale_lo, scale_hi, log_ratio_lo, log_ratio_hi):
    """(top, left, h, w) of torchvision's RandomResizedCrop.get_params, drawing from the stream `key`."""
    area = height * width
    for attempt in range(10):
        target_area = area * (scale_lo + (scale_hi - scale_lo) * uniform(key, 4 * attempt))
        aspect = np.exp(log_ratio_lo + (log_ratio_hi - log_ratio_lo) * uniform(key, 4 * attempt + 1))
        w = int(round(np.sqrt(target_area * aspect)))
        h = int(round(np.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = uniform_int(key, 4 * attempt + 2, height - h)
            j = uniform_int(key, 4 * attempt + 3, width - w)
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


@kernel
def flip_decisions(indices, seed, epoch, alternate):
    """Which samples are mirrored in `epoch`.

    Random (FFCV's RandomHorizontalFlip): a fair coin per (epoch, sample). Alternating: the
    coin of epoch 0, inverted on odd epochs, so every image is seen both ways in any two
    consecutive epochs; short schedules see more distinct views (airbench's alternating flip).
    """
    keys = sample_keys(indices, seed, SALT_FLIP, 0 if alternate else epoch)
    invert = alternate and epoch % 2 == 1
    out = np.empty(len(indices), dtype=np.bool_)
    for i in range(len(indices)):
        out[i] = coin(keys[i]) != invert
    return out


@kernel
def uniform_ints(keys, highs):
    """Per key, `uniform_int(key, n, highs[n])` for each n: the offsets `kernels.translate` and `kernels.cutout`
    draw (highs 2 pad, 2 pad and h - size, w - size), for a loader that applies them elsewhere."""
    out = np.empty((len(keys), len(highs)), dtype=np.int64)
    for i in range(len(keys)):
        for n in range(len(highs)):
            out[i, n] = uniform_int(keys[i], n, highs[n])
    return out
