"""What the `augment` ops cost: microseconds per image per op on one core, next to torchvision's own
RandAugment and TrivialAugmentWide on PIL images of the same size (what a stock pipeline runs).

Part of `bench loader --augment POLICY`, which also times whole loaders with the policy on.
"""

from __future__ import annotations

import math
import time

import numpy as np

REPEATS = 200


def _photo(res: int) -> np.ndarray:
    y, x = np.mgrid[0:res, 0:res]
    noise = np.random.default_rng(0).integers(0, 40, (res, res, 3))
    return np.clip(np.stack([x, y, x + y], -1) * 255 // (2 * res) + noise, 0, 255).astype(np.uint8)


def _us_per_call(call, image: np.ndarray) -> float:
    """On an image in the cache, as in a loader right after decoding: each call gets a fresh copy in the same
    buffer, and the copies' time is subtracted."""
    work = image.copy()
    call(work)  # compile / warm up

    def loop(with_call: bool) -> float:
        start = time.perf_counter()
        for _ in range(REPEATS):
            np.copyto(work, image)
            if with_call:
                call(work)
        return time.perf_counter() - start

    return max(0.0, loop(True) - loop(False)) / REPEATS * 1e6


def op_costs(res: int, policy: str) -> dict[str, float]:
    """us per image of each op at 90 % strength, of erasing / 3-Augment / jitter, and of the whole `policy`."""
    from visiontrain.data.draws import frozen, sample_keys
    from visiontrain.data.ops import auto_augment as aa
    from visiontrain.data.ops import color, erasing

    image, scratch = _photo(res), np.empty((res, res, 3), np.uint8)
    fill = frozen(np.uint8([124, 116, 104]))
    key = sample_keys(frozen(np.arange(1, dtype=np.uint64)), 0, 5, 0)[0]
    costs = {name: _us_per_call(lambda im, op=index: aa.apply_op(im, scratch, op, 0.9, 1.0, False, True, fill),
                                image) for index, name in enumerate(aa.OPS)}
    erase = frozen(erasing.params(1.0, (0.02, 1 / 3), (math.log(0.3), math.log(1 / 0.3)), 1, "pixel"))
    costs["random erasing (pixel, p=1)"] = _us_per_call(lambda im: erasing.erase(im, scratch, key, erase, fill), image)
    none = frozen(np.zeros(1))
    costs["3-augment"] = _us_per_call(lambda im: color.three_augment(im, scratch, key, none, fill), image)
    costs["color jitter 0.4"] = _us_per_call(
        lambda im: color.color_jitter(im, scratch, key, frozen(np.array([0.4])), fill), image)
    params = frozen(aa.parse_policy(policy).params())
    keys = iter(sample_keys(frozen(np.arange(10 * REPEATS, dtype=np.uint64)), 0, 5, 0))
    costs[f"{policy} (whole policy, mean over images)"] = _us_per_call(
        lambda im: aa.auto_augment(im, scratch, next(keys), params, fill), image)
    return costs


def torchvision_costs(res: int, num_ops: int, magnitude: int) -> dict[str, float]:
    """us per image of torchvision's RandAugment(num_ops, magnitude) and TrivialAugmentWide on a PIL image."""
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    torch.manual_seed(0)
    image = Image.fromarray(_photo(res))
    out = {}
    for name, transform in ((f"torchvision RandAugment({num_ops}, {magnitude}), PIL", v2.RandAugment(num_ops,
                                                                                                      magnitude)),
                            ("torchvision TrivialAugmentWide, PIL", v2.TrivialAugmentWide())):
        transform(image)
        start = time.perf_counter()
        for _ in range(REPEATS):
            transform(image)
        out[name] = (time.perf_counter() - start) / REPEATS * 1e6
    return out
