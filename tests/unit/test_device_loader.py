"""data.loader=device: the dataset in device memory, augmented there, pixel-identical to the other loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import build_loaders, cfg_for, epoch, identical
from visiontrain.data import device_loader as device_module
from visiontrain.infra.errors import UsageError
from visiontrain.parallel.runtime import Runtime

RECIPE = ("data.crop_padding=2", "data.cutout=4")


def rank(r: int, world: int = 2) -> Runtime:
    return Runtime(accelerator=None, device=torch.device("cpu"), rank=r, world_size=world, local_rank=r,
                   launcher="torchrun")


def test_device_batches_equal_torchvision_and_ffcv_pixel_for_pixel(shapes_dir):
    on_device = epoch(shapes_dir, "device", *RECIPE)
    assert len(on_device) == 400 // 32
    assert identical(on_device, epoch(shapes_dir, "torchvision", *RECIPE))
    assert identical(on_device, epoch(shapes_dir, "ffcv", *RECIPE))
    plain = epoch(shapes_dir, "device", "data.flip=false", "data.crop_padding=0", "data.cutout=0")
    assert all(not torch.equal(a, p) for a, p in zip(on_device, plain))  # every batch was augmented
    assert not identical(epoch(shapes_dir, "device", *RECIPE, number=2), on_device)  # each epoch draws afresh


def test_a_mid_epoch_start_replays_the_rest_of_the_epoch(shapes_dir):
    full = epoch(shapes_dir, "device", *RECIPE, number=3)
    tail = epoch(shapes_dir, "device", *RECIPE, number=3, start=5)
    assert len(tail) == len(full) - 5 and identical(tail, full[5:])
    assert identical(tail, epoch(shapes_dir, "torchvision", *RECIPE, number=3, start=5))


def test_micro_batches_see_the_pixels_of_the_full_batch(shapes_dir):
    halves = epoch(shapes_dir, "device", *RECIPE, batch=16)
    assert identical([torch.cat(halves[i:i + 2]) for i in range(0, 24, 2)], epoch(shapes_dir, "device", *RECIPE))


def test_each_rank_reads_its_shard_and_evaluation_counts_every_sample_once(shapes_dir):
    extra = (*RECIPE, "data.classes=[1,3,5,7]", "data.train_fraction=0.5", "model.num_classes=4")
    seen, val_seen = [], []
    for r in (0, 1):
        cfg = cfg_for(shapes_dir, "device", *extra)
        on_device = build_loaders(cfg, rank(r), 8)
        reference = build_loaders(cfg_for(shapes_dir, "torchvision", *extra), rank(r), 8)
        for loader in (on_device.train, reference.train):
            loader.set_epoch(1)
        assert on_device.train.epoch_indices() == reference.train.epoch_indices()
        assert identical([x for x, _ in on_device.train], [x for x, _ in reference.train])
        labels = torch.cat([y for _, y in on_device.train])
        assert set(labels.tolist()) <= {0, 1, 2, 3}  # renumbered subset
        seen += on_device.train.epoch_indices()
        valid_indices = []
        for (images, y, valid), (ref_images, ref_y, ref_valid) in zip(on_device.val, reference.val):
            assert torch.equal(images, ref_images) and torch.equal(y, ref_y) and torch.equal(valid, ref_valid)
            valid_indices += [i for i, v in zip(on_device.val.sample_indices[len(valid_indices):], valid) if v]
        val_seen += valid_indices
        assert on_device.num_classes == 4 and on_device.train_samples == 4 * 20
    assert len(seen) == len(set(seen)) == 80  # the two shards are disjoint and cover the subset
    assert sorted(val_seen) == sorted(set(val_seen)) and len(val_seen) == 4 * 11


def test_a_dataset_larger_than_half_the_memory_is_one_line_with_its_size(shapes_dir, monkeypatch):
    import psutil
    from ffcv import loader

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": 100_000})())
    monkeypatch.setattr(loader.Loader, "__init__", lambda *a, **k: pytest.fail("decoded before the size check"))
    # 400 train + 110 val images of 16 x 16 x 3 bytes, and their labels: 0.4 MB > half of 0.1 MB
    line = r"data.loader=device needs 0.00 GiB .* host memory \(0.0 GiB available, 1 process\(es\) with a copy each\)"
    with pytest.raises(UsageError, match=line):
        build_loaders(cfg_for(shapes_dir, "device"), rank(0, 1), 32)
    assert device_module.dataset_bytes(cfg_for(shapes_dir, "device"), 400, 110) == 510 * (16 * 16 * 3 + 8)


def test_the_imagenet_recipe_is_refused_in_one_line_also_for_evaluation_only(shapes_dir):
    from visiontrain.data import build_data
    from visiontrain.parallel.batch_plan import BatchPlan

    cfg = cfg_for(shapes_dir, "device", "data.recipe=imagenet")
    with pytest.raises(UsageError, match="data.loader=device implements the cifar recipe"):
        build_loaders(cfg, rank(0, 1), 32)
    with pytest.raises(UsageError, match="data.loader=device implements the cifar recipe"):
        build_data(cfg, rank(0, 1), BatchPlan.of_micro_batch(32, 1), train=False)


def test_stored_images_of_another_size_are_refused_as_the_ffcv_loader_does(shapes_dir):
    cfg = cfg_for(shapes_dir, "device", "data.image_size=32")  # the .beton holds 16 x 16 images
    with pytest.raises(UsageError, match="not all 32x32"):
        build_loaders(cfg, rank(0, 1), 32)


def test_beton_without_ffcv_and_without_folders_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "train.beton").write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "ffcv", None)
    cfg = cfg_for(tmp_path, "device")
    with pytest.raises(UsageError, match="holds .beton files but FFCV cannot be imported"):
        device_module.read_dataset(cfg, train=True)


def test_alternating_flip_mirrors_each_image_the_other_way_every_next_epoch():
    from visiontrain.data.draws import flip_decisions, frozen

    indices = frozen(np.arange(1000, dtype=np.uint64))
    alternating = [flip_decisions(indices, 5, epoch, True) for epoch in range(4)]
    assert 420 < alternating[0].sum() < 580  # epoch 0: a fair coin per image
    assert (alternating[1] == ~alternating[0]).all() and (alternating[2] == alternating[0]).all()
    assert (alternating[3] == alternating[1]).all()
    random = [flip_decisions(indices, 5, epoch, False) for epoch in range(2)]
    assert (random[0] == alternating[0]).all()  # the same first epoch
    assert 420 < (random[1] == random[0]).sum() < 580  # then independent coins


def test_alternating_flip_gives_the_same_pixels_in_every_loader(shapes_dir):
    alternate = ("data.alternate_flip=true", *RECIPE)
    for number in (1, 2):
        on_device = epoch(shapes_dir, "device", *alternate, number=number)
        assert identical(on_device, epoch(shapes_dir, "torchvision", *alternate, number=number))
        assert identical(on_device, epoch(shapes_dir, "ffcv", *alternate, number=number))
    # Per sample (each epoch has its own order): epoch 2 mirrors epoch 1's image, epoch 4 repeats epoch 2's.
    train = build_loaders(cfg_for(shapes_dir, "device", "data.alternate_flip=true", "data.crop_padding=0",
                                  "data.cutout=0"), rank(0, 1), 32).train
    seen = {}
    for number in (1, 2, 4):
        train.set_epoch(number)
        images = torch.cat([batch for batch, _ in train])
        seen[number] = dict(zip(train.epoch_indices(), images))
    common = seen[1].keys() & seen[2].keys() & seen[4].keys()  # each epoch leaves out a different partial batch
    assert len(common) > 300
    assert all(torch.equal(seen[1][i], seen[2][i].flip(2)) and torch.equal(seen[2][i], seen[4][i]) for i in common)
