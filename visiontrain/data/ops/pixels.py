"""Image operations on uint8 H x W x 3 arrays, in place, with PIL's formulas (ImageOps, ImageEnhance).

The building blocks of `auto_augment.py` and `color.py`. Geometry samples the nearest pixel (the
interpolation of torchvision's RandAugment and TrivialAugmentWide); what falls outside the image
gets `fill`. Blends round half up (PIL truncates) and clip to [0, 255]. Only numba and numpy.
"""

from __future__ import annotations

import numpy as np

from visiontrain.data.jit import kernel


@kernel(inline="always")
def clip_round(value):
    return min(max(int(np.floor(value + 0.5)), 0), 255)


@kernel
def gray(r, g, b):
    """PIL's RGB -> L: ITU-R 601-2 luma in 16-bit fixed point."""
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


@kernel
def copy_into(source, target):
    """`target` = `source` (same C-contiguous shape) as one flat loop: numba runs a 3-D slice assignment
    element by element through generic indexing, several times slower."""
    src, dst = source.reshape(-1), target.reshape(-1)
    for i in range(src.size):
        dst[i] = src[i]


@kernel
def apply_lut(image, lut):
    """`lut`: 3 x 256 (one table per channel); one flat pass over the C-contiguous H x W x 3 image. Tables are
    int16, not uint8: FFCV's memory managers change numba's shared type of writable uint8 arrays (see
    `draws.frozen`), which breaks functions compiled for them."""
    flat = image.reshape(-1)
    for i in range(0, flat.size, 3):
        flat[i] = lut[0, flat[i]]
        flat[i + 1] = lut[1, flat[i + 1]]
        flat[i + 2] = lut[2, flat[i + 2]]


@kernel
def affine(image, scratch, a, b, c, d, e, f, fill):
    """Output pixel (x, y) takes the input pixel nearest to (a x + b y + c, d x + e y + f), in pixel-centre
    coordinates (PIL's `Image.transform(AFFINE)` convention); outside the image: `fill`."""
    h, w, channels = image.shape
    for y in range(h):
        yc = y + 0.5
        for x in range(w):
            xc = x + 0.5
            xs = int(np.floor(a * xc + b * yc + c))
            ys = int(np.floor(d * xc + e * yc + f))
            if 0 <= xs < w and 0 <= ys < h:
                for k in range(channels):
                    scratch[y, x, k] = image[ys, xs, k]
            else:
                for k in range(channels):
                    scratch[y, x, k] = fill[k]
    copy_into(scratch, image)


@kernel
def rotate(image, scratch, degrees, fill):
    """Counter-clockwise by `degrees` about the image centre (PIL's `rotate`)."""
    h, w = image.shape[0], image.shape[1]
    theta = np.deg2rad(degrees)
    cos, sin = np.cos(theta), np.sin(theta)
    cx, cy = w / 2.0, h / 2.0
    # inverse map: output (x, y) reads the input at (x, y) turned clockwise by theta about the centre, which
    # turns the picture counter-clockwise (y points down)
    affine(image, scratch, cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, fill)


@kernel
def solarize(image, threshold):
    """Invert every value >= `threshold` (PIL's ImageOps.solarize; 256: nothing changes)."""
    lut = np.empty((3, 256), dtype=np.int16)
    for v in range(256):
        lut[:, v] = 255 - v if v >= threshold else v
    apply_lut(image, lut)


@kernel
def posterize(image, bits):
    """Keep the `bits` most significant bits of each value (8: nothing changes)."""
    mask = (0xFF << (8 - bits)) & 0xFF
    lut = np.empty((3, 256), dtype=np.int16)
    for v in range(256):
        lut[:, v] = v & mask
    apply_lut(image, lut)


@kernel
def brightness(image, factor):
    """Blend with black: PIL's ImageEnhance.Brightness (1: nothing changes)."""
    lut = np.empty((3, 256), dtype=np.int16)
    for v in range(256):
        lut[:, v] = clip_round(v * factor)
    apply_lut(image, lut)


@kernel
def contrast(image, factor):
    """Blend with the mean grey level: PIL's ImageEnhance.Contrast (1: nothing changes)."""
    h, w = image.shape[0], image.shape[1]
    total = 0
    for y in range(h):
        for x in range(w):
            total += gray(image[y, x, 0], image[y, x, 1], image[y, x, 2])
    mean = int(total / (h * w) + 0.5)
    lut = np.empty((3, 256), dtype=np.int16)
    for v in range(256):
        lut[:, v] = clip_round(mean + factor * (v - mean))
    apply_lut(image, lut)


@kernel
def saturation(image, factor):
    """Blend with the image's grey version: PIL's ImageEnhance.Color (1: nothing changes; 0: grayscale)."""
    h, w, c = image.shape
    for y in range(h):
        for x in range(w):
            level = gray(image[y, x, 0], image[y, x, 1], image[y, x, 2])
            for k in range(c):
                image[y, x, k] = clip_round(level + factor * (image[y, x, k] - level))


@kernel
def sharpness(image, scratch, factor):
    """Blend with PIL's SMOOTH filter (3 x 3, centre weight 5, sum 13), border pixels kept: ImageEnhance.Sharpness
    (1: nothing changes)."""
    h, w, c = image.shape
    scratch[:] = image
    for y in range(1, h - 1):
        for x in range(1, w - 1):
            for k in range(c):
                total = 4 * np.int64(image[y, x, k])
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        total += image[y + dy, x + dx, k]
                smooth = (total + 6) // 13
                scratch[y, x, k] = clip_round(smooth + factor * (np.int64(image[y, x, k]) - smooth))
    image[:] = scratch


@kernel
def autocontrast(image):
    """Stretch each channel to [0, 255] (PIL's ImageOps.autocontrast without cutoff); a flat channel stays."""
    h, w, c = image.shape
    lut = np.empty((3, 256), dtype=np.int16)
    for k in range(c):
        lo, hi = 255, 0
        for y in range(h):
            for x in range(w):
                lo, hi = min(lo, image[y, x, k]), max(hi, image[y, x, k])
        for v in range(256):
            lut[k, v] = v if hi <= lo else clip_round((v - lo) * (255.0 / (hi - lo)))
    apply_lut(image, lut)


@kernel
def equalize(image):
    """Flatten each channel's histogram (PIL's ImageOps.equalize)."""
    h, w, c = image.shape
    lut = np.empty((3, 256), dtype=np.int16)
    for k in range(c):
        histogram = np.zeros(256, dtype=np.int64)
        for y in range(h):
            for x in range(w):
                histogram[image[y, x, k]] += 1
        last = 255
        while last > 0 and histogram[last] == 0:
            last -= 1
        step = (h * w - histogram[last]) // 255
        if step == 0:
            for v in range(256):
                lut[k, v] = v
            continue
        n = step // 2
        for v in range(256):
            lut[k, v] = min(n // step, 255)
            n += histogram[v]
    apply_lut(image, lut)


@kernel
def to_gray(image):
    """Every channel the luma (torchvision's Grayscale(3))."""
    h, w = image.shape[0], image.shape[1]
    for y in range(h):
        for x in range(w):
            level = gray(image[y, x, 0], image[y, x, 1], image[y, x, 2])
            image[y, x, 0] = level
            image[y, x, 1] = level
            image[y, x, 2] = level


@kernel
def gaussian_blur(image, scratch, sigma):
    """Separable Gaussian blur, radius ceil(3 sigma), borders mirrored without repeating the edge pixel."""
    h, w, c = image.shape
    radius = max(1, int(np.ceil(3.0 * sigma)))
    weights = np.empty(2 * radius + 1)
    for i in range(-radius, radius + 1):
        weights[i + radius] = np.exp(-0.5 * (i / sigma) ** 2)
    weights /= weights.sum()
    rows = np.empty((h, w, c))
    for y in range(h):
        for x in range(w):
            for k in range(c):
                total = 0.0
                for i in range(-radius, radius + 1):
                    xs = _mirror(x + i, w)
                    total += weights[i + radius] * image[y, xs, k]
                rows[y, x, k] = total
    for y in range(h):
        for x in range(w):
            for k in range(c):
                total = 0.0
                for i in range(-radius, radius + 1):
                    total += weights[i + radius] * rows[_mirror(y + i, h), x, k]
                scratch[y, x, k] = clip_round(total)
    copy_into(scratch, image)


@kernel(inline="always")
def _mirror(i, n):
    if n == 1:
        return 0
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i
