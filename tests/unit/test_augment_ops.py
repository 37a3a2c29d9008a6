"""The `augment` section's per-image ops: pixel-identical in the FFCV and torchvision loaders, magnitude 0 is
the identity, the draws follow their stated distributions, bad values are one line."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from tests.helpers import epoch, identical
from visiontrain.config import load_config
from visiontrain.data.draws import SALT_AUTO_AUGMENT, frozen, sample_keys
from visiontrain.data.ops import auto_augment as aa
from visiontrain.data.ops import color, erasing, pixels
from visiontrain.infra.errors import UsageError

PLAIN = ("data.flip=false", "data.crop_padding=0", "data.cutout=0")
FILL = frozen(np.uint8([124, 116, 104]))


def photo(size: int = 24, seed: int = 0) -> np.ndarray:
    """A smooth image with edges: gradients plus a bright square (every op changes it visibly)."""
    y, x = np.mgrid[0:size, 0:size]
    image = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1).astype(np.uint8)
    image[size // 4: size // 2, size // 4: size // 2] = (250, 30, 200)
    noise = np.random.default_rng(seed).integers(0, 20, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def keys(n: int, salt: int = SALT_AUTO_AUGMENT, epoch_number: int = 0) -> np.ndarray:
    return sample_keys(frozen(np.arange(n, dtype=np.uint64)), 0, salt, epoch_number)


# ------------------------------------------------------------------ parity between loaders
@pytest.mark.parametrize("ops", [
    ("augment.auto=rand-m9-mstd0.5-inc1",),
    ("augment.auto=trivial", "augment.erase_prob=0.5", "augment.erase_mode=const"),
    ("augment.three_augment=true", "augment.color_jitter=0.4", "augment.erase_prob=1", "augment.erase_count=2"),
], ids=["randaugment", "trivial+erase", "3aug+jitter+erase"])
def test_each_op_gives_identical_batches_in_ffcv_and_torchvision_also_mid_epoch(shapes_dir, ops):
    recipe = ("data.recipe=imagenet", *ops)
    ffcv, tv = epoch(shapes_dir, "ffcv", *recipe), epoch(shapes_dir, "torchvision", *recipe)
    assert len(ffcv) == 12 and identical(ffcv, tv)
    plain = epoch(shapes_dir, "torchvision", "data.recipe=imagenet")
    assert sum(not torch.equal(a, p) for a, p in zip(tv, plain)) == len(tv)  # the ops changed every batch
    tail = epoch(shapes_dir, "ffcv", *recipe, start=7)
    assert identical(tail, tv[7:])  # a resumed epoch draws what the uninterrupted one drew


def test_the_ops_follow_the_cifar_recipe_too_and_other_loaders_refuse_them(shapes_dir):
    recipe = ("augment.auto=rand-m5-n3", "data.crop_padding=2")
    assert identical(epoch(shapes_dir, "ffcv", *recipe), epoch(shapes_dir, "torchvision", *recipe))
    with pytest.raises(UsageError, match=r"'augment.auto' = 'rand-m5' is invalid: per-image ops run in "
                                         r"data.loader=ffcv or torchvision, not data.loader=device"):
        load_config(None, ["data.loader=device", "augment.auto=rand-m5"])


def test_repeated_copies_are_augmented_differently_identically_in_both_loaders_and_resume_exactly(shapes_dir):
    from tests.helpers import build_loaders, cfg_for, single_cpu_runtime

    recipe = ("data.recipe=imagenet", "augment.auto=rand-m9", "augment.repeats=3")
    train = build_loaders(cfg_for(shapes_dir, "torchvision", *recipe), single_cpu_runtime(), 30).train
    train.set_epoch(1)
    batches = [(images.clone(), labels.clone()) for images, labels in train]
    images, labels = batches[0]
    indices = train.epoch_indices()[:30]
    assert indices[0] == indices[1] == indices[2] != indices[3]  # one process: the 3 copies in a row
    assert labels[0] == labels[1] == labels[2]
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])
    ffcv = epoch(shapes_dir, "ffcv", *recipe, batch=30)
    assert identical(ffcv, [b[0] for b in batches])  # FFCV reads each copy through its own metadata row
    assert identical(epoch(shapes_dir, "ffcv", *recipe, start=4, batch=30), [b[0] for b in batches[4:]])
    with pytest.raises(UsageError, match=r"'augment.repeats' = 3 is invalid: repeated augmentation runs in "
                                         r"data.loader=ffcv or torchvision, not data.loader=device"):
        load_config(None, ["augment.repeats=3", "data.loader=device"])
    with pytest.raises(UsageError, match=r"'augment.repeats' = 3 is invalid: with data.loader=ffcv needs "
                                         r"data.os_cache=true"):
        load_config(None, ["augment.repeats=3", "data.os_cache=false"])


# ------------------------------------------------------------------ magnitude 0 and each op
@pytest.mark.parametrize("op", [name for name in aa.OPS if name not in ("autocontrast", "equalize")])
def test_every_op_with_a_strength_is_the_identity_at_magnitude_zero(op):
    image, scratch = photo(), np.empty((24, 24, 3), np.uint8)
    for trivial in (False, True):
        for sign in (-1.0, 1.0):
            out = image.copy()
            aa.apply_op(out, scratch, aa.OPS.index(op), 0.0, sign, trivial, True, FILL)
            assert np.array_equal(out, image), (op, trivial, sign)
        strong = image.copy()
        aa.apply_op(strong, scratch, aa.OPS.index(op), 1.0, 1.0, trivial, True, FILL)
        assert op == "identity" or not np.array_equal(strong, image), op  # and at full strength it acts


def test_ops_match_their_definitions_on_known_pixels():
    image = photo()
    out = image.copy()
    pixels.solarize(out, 128)
    assert np.array_equal(out, np.where(image >= 128, 255 - image, image))
    out = image.copy()
    pixels.posterize(out, 3)
    assert np.array_equal(out, image & 0b11100000)
    out = image.copy()
    pixels.autocontrast(out)
    assert [out[..., k].min() for k in range(3)] == [0, 0, 0] and [out[..., k].max() for k in range(3)] == [255] * 3
    out = image.copy()
    pixels.equalize(out)  # a flat histogram: each quarter of the range holds about a quarter of the pixels
    counts = np.histogram(out[..., 0], bins=4, range=(0, 256))[0]
    assert counts.min() > 0.15 * out[..., 0].size
    scratch = np.empty_like(image)
    out = image.copy()
    aa.apply_op(out, scratch, aa.OPS.index("translate_x"), 1.0, 1.0, True, True, FILL)  # 32 px on 24 px: all fill
    assert (out == FILL).all()
    out = image.copy()
    pixels.rotate(out, scratch, 90.0, FILL)  # a quarter turn moves pixels exactly (even side, nearest pixel)
    assert np.array_equal(out, np.rot90(image))
    out = image.copy()
    pixels.to_gray(out)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


# ------------------------------------------------------------------ distributions of the draws
def test_randaugment_chooses_ops_uniformly_and_applies_each_with_its_probability():
    n = 14_000
    ks = keys(n)
    ops = Counter(int(aa.op_of_layer(k, layer)) for k in ks for layer in (0, 1))
    assert set(ops) == set(range(14)) and all(abs(c - 2 * n / 14) < 5 * math.sqrt(2 * n / 14) for c in ops.values())
    applied = np.mean([aa.uniform(k, 1) < 0.5 for k in ks])
    assert abs(applied - 0.5) < 0.02
    signs = np.mean([aa.sign_of_layer(k, 0) for k in ks])
    assert abs(signs) < 0.03


def test_magnitudes_follow_the_policy_noise_bounds_and_trivial_bins():
    ks = keys(20_000)
    noisy = frozen(aa.parse_policy("rand-m9-mstd0.5-inc1").params())
    f = np.array([aa.fraction_of_layer(k, 0, noisy) for k in ks]) * 10
    # N(9, 0.5) clipped at 10: mean 9 - 0.5 (phi(2) - 2 (1 - Phi(2))) = 8.996
    assert abs(f.mean() - 8.996) < 0.015 and abs(f.std() - 0.49) < 0.02 and f.max() <= 10.0
    uniform = frozen(aa.parse_policy("rand-m8-mstdinf").params())
    u = np.array([aa.fraction_of_layer(k, 0, uniform) for k in ks]) * 10
    assert abs(u.mean() - 4.0) < 0.05 and 0 <= u.min() and u.max() <= 8
    fixed = frozen(aa.parse_policy("rand-m7").params())
    assert {aa.fraction_of_layer(k, 0, fixed) for k in ks[:50]} == {0.7}
    trivial = frozen(aa.parse_policy("trivial").params())
    bins = Counter(round(aa.fraction_of_layer(k, 0, trivial) * 30) for k in ks)
    assert sorted(bins) == list(range(31)) and max(bins.values()) < 1.2 * len(ks) / 31


def test_erasing_rectangles_cover_the_stated_areas_and_ratios():
    height = width = 64
    areas, ratios = [], []
    params = erasing.params(1.0, (0.02, 1 / 3), (math.log(0.3), math.log(1 / 0.3)), 1, "const")
    for k in keys(3000):
        top, left, h, w = erasing.rectangle(k, 1, height, width, *params[1:5], 1)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        if h:
            areas.append(h * w / (height * width))
            ratios.append(h / w)
    assert 0.015 < min(areas) and max(areas) < 0.36 and abs(np.mean(areas) - (0.02 + 1 / 3) / 2) < 0.03
    assert abs(np.mean(np.log(ratios))) < 0.06  # log-uniform in [log 0.3, log 1/0.3]: symmetric about 0
    erased = 0
    for k in keys(2000):
        image = photo(32)
        erasing.erase(image, np.empty_like(image), k, frozen(erasing.params(0.25, (0.1, 0.2), (0.5, 2.0), 1,
                                                                                 "const")), FILL)
        erased += bool((image == FILL).all(axis=-1).sum() >= 0.05 * 32 * 32)
    assert abs(erased / 2000 - 0.25) < 0.03


def test_three_augment_picks_each_of_its_ops_a_third_of_the_time():
    picks = Counter(int(color.uniform_int(k, 0, 2)) for k in keys(9000))
    assert all(abs(c - 3000) < 200 for c in picks.values())
    orders = Counter(tuple(color.jitter_order(k)) for k in keys(6000))
    assert len(orders) == 6 and all(abs(c - 1000) < 150 for c in orders.values())


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("value, detail", [
    ("rand-m11", r"magnitude m11 out of range \[0, mmax=10\]"),
    ("rand-m9-q3", r"unknown part 'q3'"),
    ("autoaug-m9", r"unknown policy 'autoaug'"),
    ("rand-m9-p1.5", r"p1.5: a probability in \[0, 1\]"),
    ("rand-n2", r"no magnitude \(m<0..10>\)"),
    ("rand-m9-ninf", r"ninf: only mstd may be inf"),
])
def test_bad_policies_are_one_line_naming_the_part(value, detail):
    with pytest.raises(UsageError, match=rf"'augment.auto' = '{value}' is invalid: {detail}; allowed 'rand-m") as err:
        load_config(None, [f"augment.auto={value}"])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override, allowed", [
    ("augment.erase_prob=1.5", "a probability in [0, 1]"),
    ("augment.mix_prob=-0.1", "a probability in [0, 1]"),
    ("augment.mixup_alpha=-1", "must be >= 0"),
    ("augment.erase_area=[0.5,0.2]", "0 < min <= max <= 1"),
    ("augment.erase_mode=noise", "allowed const, pixel"),
    ("augment.repeats=0", "must be >= 1"),
])
def test_bad_values_name_the_key_and_what_is_allowed(override, allowed):
    with pytest.raises(UsageError, match=re_escape(allowed)):
        load_config(None, [override])


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


# ------------------------------------------------------------------ compile flags
def test_kernels_keep_exact_float_semantics_when_first_compiled_inside_ffcv_fast_math_pipeline(tmp_path):
    """FFCV compiles its pipeline with fastmath; a numba callee inherits that unless it sets the flag itself,
    and the cache then serves the fast-math version to every later caller (fastmath folds `std == inf`)."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from numba import njit\n"
        "from visiontrain.data.draws import frozen\n"
        "from visiontrain.data.ops import auto_augment as aa\n"
        "params = frozen(aa.parse_policy('rand-m8-mstdinf').params())\n"
        "@njit(fastmath=True, error_model='numpy')\n"
        "def like_ffcv(key, params):\n"
        "    return aa.fraction_of_layer(key, 0, params)\n"
        "keys = np.arange(1, 4001, dtype=np.uint64) * np.uint64(2654435761)\n"
        "inside = np.array([like_ffcv(k, params) for k in keys])\n"
        "alone = np.array([aa.fraction_of_layer(k, 0, params) for k in keys])\n"
        "print(inside.max(), alone.max(), abs(inside.mean() - 0.4), abs(alone.mean() - 0.4))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    inside_max, alone_max, inside_off, alone_off = map(float, out.stdout.split())
    assert inside_max <= 0.8 and alone_max <= 0.8 and inside_off < 0.02 and alone_off < 0.02


def test_every_compiled_kernel_sets_its_float_flags_instead_of_inheriting_the_callers():
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import visiontrain.data

    unset = []
    for info in pkgutil.walk_packages(visiontrain.data.__path__, "visiontrain.data."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, CPUDispatcher) and value.__module__ == info.name:
                options = value.targetoptions
                if options.get("inline") != "always" and (options.get("fastmath") is not False
                                                          or options.get("error_model") != "numpy"):
                    unset.append(f"{info.name}.{name}")
    assert unset == []
