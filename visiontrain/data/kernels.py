"""The pixel kernels of the two file loaders: flip, translate and cutout on uint8 HWC images, in numba.

The per-sample kernels (`flip_into`, `translate`, `cutout`) are shared: `ffcv_ops` loops over
them in FFCV's parallel loop, the `*_batch` functions below in a plain loop (the torchvision
loader's DataLoader workers are already one process per core). Their randomness comes from
`draws.py`, so both loaders change the same pixels of the same sample in the same epoch; the
device loader reimplements these ops as tensor ops on the draws alone. Only numba and numpy
here, as in `draws.py`; 1-D arrays from outside FFCV must be `draws.frozen`.
"""

from __future__ import annotations

import numpy as np

from visiontrain.data.draws import SALT_CUTOUT, SALT_TRANSLATE, flip_decisions, sample_keys, uniform_int
from visiontrain.data.jit import kernel


@kernel
def flip_into(image, out, flip):
    """`out` = `image`, mirrored left-right if `flip` (both C-contiguous H x W x C).

    Flat loops, not `out[:] = image`: numba runs a slice assignment between 3-D arrays element
    by element through generic indexing (67 us for a 160 px image on the benchmark CPU, where
    the flat copy takes 2 us). The mirror moves whole pixels, C bytes at a time (about 70 us).
    """
    src, dst = image.reshape(-1), out.reshape(-1)
    if not flip:
        for i in range(src.size):
            dst[i] = src[i]
        return
    height, width, channels = image.shape
    row = width * channels
    for y in range(height):
        start = y * row
        for x in range(width):
            source, target = start + (width - 1 - x) * channels, start + x * channels
            for k in range(channels):
                dst[target + k] = src[source + k]


@kernel
def reflected(i, n):
    """Index `i` of a length-`n` axis mirrored at its ends without repeating the edge (numpy's 'reflect')."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


@kernel
def translate(image, padded, key, pad, fill, reflect=False):
    """Shift `image` in place by up to `pad` px each way; uncovered pixels get `fill` (FFCV's RandomTranslate),
    or with `reflect` the image mirrored at its border (pad < h and w).

    `padded` is scratch space of (h + 2 pad, w + 2 pad, c).
    """
    h, w = image.shape[0], image.shape[1]
    if reflect:
        for y in range(h + 2 * pad):
            source_row = reflected(y - pad, h)
            for x in range(w + 2 * pad):
                source_col = reflected(x - pad, w)
                for k in range(image.shape[2]):
                    padded[y, x, k] = image[source_row, source_col, k]
    else:
        padded[:] = fill
        padded[pad : pad + h, pad : pad + w] = image
    dy = uniform_int(key, 0, 2 * pad)
    dx = uniform_int(key, 1, 2 * pad)
    image[:] = padded[dy : dy + h, dx : dx + w]


@kernel
def cutout(image, key, size, fill):
    """Fill one `size` x `size` square lying inside `image` with `fill`, in place (FFCV's Cutout)."""
    h, w = image.shape[0], image.shape[1]
    top = uniform_int(key, 0, h - size)
    left = uniform_int(key, 1, w - size)
    image[top : top + size, left : left + size] = fill


@kernel
def flip_batch(images, indices, seed, epoch, alternate):
    flips = flip_decisions(indices, seed, epoch, alternate)
    out = np.empty_like(images)
    for i in range(images.shape[0]):
        flip_into(images[i], out[i], flips[i])
    return out


@kernel
def translate_batch(images, indices, seed, epoch, pad, fill, reflect=False):
    keys = sample_keys(indices, seed, SALT_TRANSLATE, epoch)
    n, h, w, c = images.shape
    padded = np.empty((h + 2 * pad, w + 2 * pad, c), dtype=images.dtype)
    for i in range(n):
        translate(images[i], padded, keys[i], pad, fill, reflect)
    return images


@kernel
def cutout_batch(images, indices, seed, epoch, size, fill):
    keys = sample_keys(indices, seed, SALT_CUTOUT, epoch)
    for i in range(images.shape[0]):
        cutout(images[i], keys[i], size, fill)
    return images
