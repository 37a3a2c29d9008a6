"""Random erasing (Zhong et al. 2017; timm's RandomErasing): rectangles of the image replaced.

With probability `prob`, `count` rectangles, each of area U(area) x image area / count and aspect
ratio exp(U(log ratio)), placed uniformly where they fit (up to 10 tries each, as timm), are filled
with a constant colour (`const`: the recipe's mean colour, which normalizes to 0 like timm's
`const` mode) or per-pixel noise (`pixel`: uniform uint8 values from the sample's own stream, where
timm draws normal noise after normalization).
"""

from __future__ import annotations

import numpy as np

from visiontrain.data.draws import splitmix64, uniform, uniform_int
from visiontrain.data.jit import kernel

_U = np.uint64
MODES = ("const", "pixel")
_NOISE_STREAM = _U(0x5EED0F0015E)  # the noise pixels' stream, apart from the rectangle draws


def params(prob: float, area: tuple[float, float], log_ratio: tuple[float, float], count: int, mode: str) -> np.ndarray:
    return np.array([prob, area[0], area[1], log_ratio[0], log_ratio[1], count, MODES.index(mode)], dtype=np.float64)


@kernel
def rectangle(key, draw, height, width, area_lo, area_hi, log_ratio_lo, log_ratio_hi, count):
    """(top, left, h, w) of one rectangle, or h = 0 when none fits in 10 tries."""
    for attempt in range(10):
        base = draw + 4 * attempt
        target = height * width * (area_lo + (area_hi - area_lo) * uniform(key, base)) / count
        aspect = np.exp(log_ratio_lo + (log_ratio_hi - log_ratio_lo) * uniform(key, base + 1))
        h = int(round(np.sqrt(target * aspect)))
        w = int(round(np.sqrt(target / aspect)))
        if 0 < h < height and 0 < w < width:
            return uniform_int(key, base + 2, height - h), uniform_int(key, base + 3, width - w), h, w
    return 0, 0, 0, 0


@kernel
def erase(image, scratch, key, params, fill):
    if uniform(key, 0) >= params[0]:
        return
    height, width, channels = image.shape
    count = int(params[5])
    noise = splitmix64(key ^ _NOISE_STREAM)
    for r in range(count):
        top, left, h, w = rectangle(key, 1 + 40 * r, height, width, params[1], params[2], params[3], params[4], count)
        for y in range(top, top + h):
            for x in range(left, left + w):
                for k in range(channels):
                    if params[6] == 1:
                        image[y, x, k] = uniform_int(noise, (y * width + x) * channels + k, 255)
                    else:
                        image[y, x, k] = fill[k]
