"""Cheap colour ops: the 3-Augment of DeiT III and colour jitter.

- `three_augment`: each image gets exactly one of grayscale, solarize (threshold 128) and Gaussian
  blur (sigma uniform in [0.1, 2.0]), chosen uniformly (DeiT III's RandomChoice of the three).
- `color_jitter`: brightness, contrast and saturation factors, each uniform in
  [max(0, 1 - j), 1 + j], applied in a random order (torchvision's ColorJitter without hue: hue
  needs an HSV round trip per pixel and none of the recipes here use it).
"""

from __future__ import annotations

import numpy as np

from visiontrain.data.draws import uniform, uniform_int
from visiontrain.data.jit import kernel
from visiontrain.data.ops import pixels

THREE_AUGMENT_OPS = ("grayscale", "solarize", "blur")
BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128


@kernel
def three_augment(image, scratch, key, params, fill):
    choice = uniform_int(key, 0, 2)
    if choice == 0:
        pixels.to_gray(image)
    elif choice == 1:
        pixels.solarize(image, SOLARIZE_THRESHOLD)
    else:
        sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * uniform(key, 1)
        pixels.gaussian_blur(image, scratch, sigma)


@kernel
def jitter_order(key):
    """A uniformly random order of (brightness, contrast, saturation): one of the 6 permutations."""
    order = np.array([0, 1, 2])
    for i in range(2, 0, -1):  # Fisher-Yates
        j = uniform_int(key, 10 + i, i)
        order[i], order[j] = order[j], order[i]
    return order


@kernel
def color_jitter(image, scratch, key, params, fill):
    strength = params[0]
    low = max(0.0, 1.0 - strength)
    for op in jitter_order(key):
        factor = low + (1.0 + strength - low) * uniform(key, op)
        if op == 0:
            pixels.brightness(image, factor)
        elif op == 1:
            pixels.contrast(image, factor)
        else:
            pixels.saturation(image, factor)
