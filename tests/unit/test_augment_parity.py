"""One augmentation description (`augment.py`), two loaders: FFCV and torchvision produce the same pixels.

Both read the shapes dataset: PNG files for torchvision, the same pixels stored raw in the
.beton for FFCV, so no decoder difference can hide a difference in augmentation.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from tests.helpers import build_loaders, cfg_for, epoch, identical, single_cpu_runtime
from visiontrain.data import augment
from visiontrain.data.base import DeviceNormalizer
from visiontrain.data.draws import SALT_CROP, SALT_FLIP, random_resized_crop, sample_keys, uniform
from visiontrain.data.sources import open_sources

CPU = torch.device("cpu")
RUNTIME = single_cpu_runtime()
PLAIN = ("data.flip=false", "data.crop_padding=0", "data.cutout=0")
NORMALIZE = DeviceNormalizer([0.5] * 3, [0.25] * 3, CPU, channels_last=True)  # the demo config's mean and std


def test_cifar_recipe_flip_translate_cutout_gives_identical_batches_in_both_loaders(shapes_dir):
    recipe = ("data.crop_padding=2", "data.cutout=4")
    ffcv = epoch(shapes_dir, "ffcv", *recipe)
    tv = epoch(shapes_dir, "torchvision", *recipe)
    assert len(ffcv) == 400 // 32 and identical(ffcv, tv)
    plain = epoch(shapes_dir, "torchvision", *PLAIN)
    assert all(not torch.equal(a, p) for a, p in zip(tv, plain))  # every batch was augmented
    # Augmentation does not depend on how samples are batched: micro-batches of 16 (gradient
    # accumulation) see exactly the pixels of the batches of 32 they make up.
    halves = epoch(shapes_dir, "ffcv", *recipe, batch=16)
    assert identical([torch.cat(halves[i : i + 2]) for i in range(0, 24, 2)], ffcv)
    # A resumed epoch.
    ffcv_tail = epoch(shapes_dir, "ffcv", *recipe, number=2, start=5)
    tv_tail = epoch(shapes_dir, "torchvision", *recipe, number=2, start=5)
    assert len(tv_tail) == len(ffcv) - 5 and identical(ffcv_tail, tv_tail)
    assert identical(epoch(shapes_dir, "torchvision", *recipe, number=2)[5:], tv_tail)
    assert not torch.equal(tv_tail[0], tv[5])  # epoch 2 draws afresh


@pytest.mark.parametrize("loader", ["ffcv", "torchvision"])
def test_one_loader_over_consecutive_epochs_equals_fresh_loaders(shapes_dir, loader):
    """A run keeps its loader for all epochs: epoch 2 after epoch 1 (a resumed epoch tail first) must draw
    exactly what a fresh loader draws for epoch 2 (FFCV's operations read the epoch from the loader's cell)."""
    recipe = ("data.crop_padding=2", "data.cutout=4")
    train = build_loaders(cfg_for(shapes_dir, loader, *recipe), RUNTIME, 32).train
    seen = {}
    for number, start in ((1, 5), (2, 0), (3, 0)):
        train.set_epoch(number, start)
        seen[number] = [images.clone() for images, _ in train]
    assert len(seen[1]) == len(seen[2]) - 5
    assert identical(seen[2], epoch(shapes_dir, loader, *recipe, number=2))
    assert identical(seen[3], epoch(shapes_dir, loader, *recipe, number=3))
    assert not torch.equal(seen[2][0], seen[3][0])


def test_imagenet_recipe_draws_the_same_crops_and_gives_identical_pixels(shapes_dir):
    """Exact equality, no tolerance: both loaders crop with `draws.random_resized_crop` under the same keys
    and resize with OpenCV's INTER_AREA (FFCV's `resize_crop` calls cv::resize with it). On a .beton written
    with --write-mode jpg they would differ by JPEG decoding: FFCV decodes with libjpeg-turbo's fast integer
    DCT (TJFLAG_FASTDCT) its own re-encoded copy, torchvision the original file with PIL."""
    recipe = ("data.recipe=imagenet",)
    tv_loader = build_loaders(cfg_for(shapes_dir, "torchvision", *recipe), RUNTIME, 32).train
    tv_loader.set_epoch(1)
    tv = [images.clone() for images, _ in tv_loader]
    ffcv = epoch(shapes_dir, "ffcv", *recipe)
    assert len(tv) == 12 and identical(ffcv, tv)

    # The crop parameters, rebuilt from the raw pixels of the first batch: what both loaders did.
    indices = np.array(tv_loader.epoch_indices()[:32], dtype=np.uint64)
    source = open_sources(shapes_dir)[0]
    crop_keys, flip_keys = sample_keys(indices, 5, SALT_CROP, 1), sample_keys(indices, 5, SALT_FLIP, 1)
    ratio = (float(np.log(3 / 4)), float(np.log(4 / 3)))
    raw, expected, crops = [], [], set()
    for k, index in enumerate(indices):
        pixels = np.asarray(source.load(int(index)))
        i, j, h, w = random_resized_crop(crop_keys[k], 16, 16, 0.08, 1.0, *ratio)
        image = cv2.resize(pixels[i : i + h, j : j + w], (16, 16), interpolation=cv2.INTER_AREA)
        expected.append(image[:, ::-1] if uniform(flip_keys[k], 0) < 0.5 else image)
        raw.append(pixels)
        crops.add((i, j, h, w))
    as_batch = lambda images: NORMALIZE(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))  # noqa: E731
    assert torch.equal(tv[0], as_batch(expected)) and len(crops) > 20
    assert not torch.equal(tv[0], as_batch(raw))


def test_one_edit_of_the_recipe_changes_both_loaders(shapes_dir, monkeypatch):
    """Translate padding 4 -> 2, edited in the recipe object that `augment.train_recipe` returns."""
    recipe = ("data.crop_padding=4", "data.flip=false")
    before = {loader: epoch(shapes_dir, loader, *recipe) for loader in ("ffcv", "torchvision")}
    derive = augment.train_recipe

    def edited(d, a=None):
        r = derive(d, a)
        ops = tuple(dataclasses.replace(op, padding=2) if isinstance(op, augment.Translate) else op for op in r.ops)
        return dataclasses.replace(r, ops=ops)

    monkeypatch.setattr(augment, "train_recipe", edited)
    after = {loader: epoch(shapes_dir, loader, *recipe) for loader in ("ffcv", "torchvision")}
    plain = epoch(shapes_dir, "torchvision", *PLAIN)
    assert identical(before["ffcv"], before["torchvision"]) and identical(after["ffcv"], after["torchvision"])
    for loader in ("ffcv", "torchvision"):
        assert all(not torch.equal(b, a) for b, a in zip(before[loader], after[loader]))
        assert all(not torch.equal(a, p) for a, p in zip(after[loader], plain))
    # A shift right by d px leaves d columns of the fill colour (mean, 128) on the left: at most 2 now, up to 4 before.
    fill = NORMALIZE(torch.full((1, 3, 1, 1), 128, dtype=torch.uint8))
    three_fill_columns = lambda images: (torch.cat(images)[..., :3] == fill).all(dim=(1, 2, 3))  # noqa: E731
    assert three_fill_columns(before["torchvision"]).any() and not three_fill_columns(after["torchvision"]).any()



@pytest.mark.parametrize("shape", [(5, 7, 3), (4, 6, 1), (1, 1, 3)])
def test_the_flip_kernel_mirrors_or_copies_every_byte(shape):
    from visiontrain.data.kernels import flip_into

    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for flip, expected in ((True, image[:, ::-1]), (False, image)):
        out = np.zeros_like(image)
        flip_into(image, out, flip)
        assert np.array_equal(out, expected)


def test_reflect_fill_gives_identical_batches_in_every_loader(shapes_dir):
    recipe = ("data.crop_padding=3", "data.translate_fill=reflect", "data.cutout=0")
    ffcv, tv, device = (epoch(shapes_dir, loader, *recipe) for loader in ("ffcv", "torchvision", "device"))
    assert identical(ffcv, tv) and identical(tv, device)
    mean_fill = epoch(shapes_dir, "torchvision", "data.crop_padding=3", "data.cutout=0")
    assert not identical(tv, mean_fill)


def test_the_reflect_kernel_equals_numpy_reflect_padding_then_the_drawn_crop():
    from visiontrain.data.draws import frozen, uniform_int
    from visiontrain.data.kernels import translate

    rng = np.random.default_rng(1)
    for key in rng.integers(0, 2**63, 20, dtype=np.uint64):
        image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
        expected_source = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="reflect")
        dy, dx = uniform_int(key, 0, 4), uniform_int(key, 1, 4)
        shifted = image.copy()
        translate(shifted, np.empty((10, 9, 3), np.uint8), key, 2, frozen(np.uint8([0, 0, 0])), True)
        assert np.array_equal(shifted, expected_source[dy:dy + 6, dx:dx + 5])
