"""The FFCV backend against the torchvision backend: same order, same pixels, same contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import build_loaders, prep
from visiontrain.config import load_config
from visiontrain.data.augment import resolution_for_epoch
from visiontrain.parallel.runtime import Runtime

CPU = torch.device("cpu")


def runtime(rank: int = 0, world: int = 1) -> Runtime:
    return Runtime(accelerator=None, device=CPU, rank=rank, world_size=world, local_rank=rank, launcher="single")


def cfg_for(path, backend: str, *extra: str):
    return load_config("configs/demo/train.yaml", [
        f"data.loader={backend}", f"data.path={path}", "data.image_size=16", "data.val_image_size=16",
        "data.num_workers=1", "data.crop_padding=2", *extra])


def batches(bundle, epoch: int, start: int = 0):
    bundle.train.set_epoch(epoch, start)
    return [(images.clone(), labels.clone()) for images, labels in bundle.train]


def test_train_order_equals_the_torchvision_backend_and_ranks_are_disjoint(shapes_dir):
    for rank in range(2):
        ffcv = build_loaders(cfg_for(shapes_dir, "ffcv"), runtime(rank, 2), 16)
        tv = build_loaders(cfg_for(shapes_dir, "torchvision"), runtime(rank, 2), 16)
        for epoch in (0, 3):
            ffcv.train.set_epoch(epoch)
            tv.train.set_epoch(epoch)
            assert ffcv.train.epoch_indices() == tv.train.epoch_indices()
    shards = []
    for rank in range(2):
        bundle = build_loaders(cfg_for(shapes_dir, "ffcv"), runtime(rank, 2), 16)
        bundle.train.set_epoch(1)
        shards.append(set(bundle.train.epoch_indices()))
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 384  # 400 // 2 ranks, whole batches


def test_without_augmentation_ffcv_batches_are_pixel_identical_to_torchvision(shapes_dir):
    """Raw .beton, no flip/translate: same samples, same uint8 pixels, same normalization."""
    args = ("data.flip=false", "data.crop_padding=0")
    ffcv = batches(build_loaders(cfg_for(shapes_dir, "ffcv", *args), runtime(), 32), epoch=2)
    tv = batches(build_loaders(cfg_for(shapes_dir, "torchvision", *args, "data.num_workers=0"), runtime(), 32), epoch=2)
    assert len(ffcv) == len(tv) == 12
    for (fi, fl), (ti, tl) in zip(ffcv, tv):
        assert torch.equal(fl, tl) and torch.equal(fi, ti)
        assert fi.is_contiguous(memory_format=torch.channels_last) and fi.dtype == torch.float32


def test_augmentation_is_reproducible_and_a_resumed_epoch_replays_its_tail(shapes_dir):
    cfg = cfg_for(shapes_dir, "ffcv", "data.cutout=4")
    full = batches(build_loaders(cfg, runtime(), 32), epoch=1)
    again = batches(build_loaders(cfg, runtime(), 32), epoch=1)
    tail = batches(build_loaders(cfg, runtime(), 32), epoch=1, start=5)
    other_epoch = batches(build_loaders(cfg, runtime(), 32), epoch=2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, again))
    assert len(tail) == len(full) - 5 and all(torch.equal(a[0], b[0]) for a, b in zip(full[5:], tail))
    assert not torch.equal(full[0][0], other_epoch[0][0])
    unaugmented = cfg_for(shapes_dir, "ffcv", "data.flip=false", "data.crop_padding=0")
    plain = batches(build_loaders(unaugmented, runtime(), 32), 1)
    assert not torch.equal(full[0][0], plain[0][0])  # augmentation does change the pixels


def test_seeded_ops_keep_ffcv_semantics():
    """Flip mirrors about half the images exactly; translate shifts by <= padding with the fill colour;
    cutout paints exactly one size x size square."""
    from visiontrain.data.ffcv_ops import EpochCell, SeededCutout, SeededFlip, SeededTranslate

    rng = np.random.default_rng(0)
    images = rng.integers(1, 255, (400, 12, 12, 3), dtype=np.uint8)
    indices = np.arange(400, dtype=np.uint64)
    flipped = SeededFlip(1, EpochCell()).generate_code()(images.copy(), np.empty_like(images), indices)
    mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images)]
    unchanged = [np.array_equal(f, i) for f, i in zip(flipped, images)]
    assert all(m or u for m, u in zip(mirrored, unchanged)) and 160 < sum(mirrored) < 240

    fill = (7, 8, 9)
    translate = SeededTranslate(2, fill, 1, EpochCell()).generate_code()
    shifted = translate(images.copy(), np.empty((400, 16, 16, 3), np.uint8), indices)
    for out, src in zip(shifted[:50], images[:50]):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(out[max(0, dy):12 + min(0, dy), max(0, dx):12 + min(0, dx)],
                                     src[max(0, -dy):12 - max(0, dy), max(0, -dx):12 - max(0, dx)])]
        assert matches
    assert (shifted == np.array(fill, np.uint8)).all(-1).any()

    cut = SeededCutout(4, fill, 1, EpochCell()).generate_code()(images.copy(), None, indices)
    painted = (cut == np.array(fill, np.uint8)).all(-1)
    assert (painted.sum((1, 2)) == 16).all()


def test_eval_loader_counts_every_val_sample_once_over_two_ranks(shapes_dir):
    labels, counted = [], 0
    for rank in range(2):
        bundle = build_loaders(cfg_for(shapes_dir, "ffcv"), runtime(rank, 2), 16)
        for images, y, valid in bundle.val:
            assert images.shape[0] == y.shape[0] == valid.shape[0]
            labels += y[valid].tolist()
            counted += int(valid.sum())
    assert counted == 110 and sorted(np.bincount(labels).tolist()) == [11] * 10


def test_progressive_resizing_schedule_and_decoder_output(imagenet_sample, tmp_path):
    cfg = load_config(None, ["data.loader=ffcv", "data.recipe=imagenet", "data.progressive_resizing=true",
                             "data.min_res=32", "data.max_res=64", "data.ramp_start_epoch=1", "data.ramp_end_epoch=3",
                             "data.res_multiple=16", "train.epochs=4", "schedule.warmup_epochs=0"])
    assert [resolution_for_epoch(e, cfg.data) for e in range(5)] == [32, 32, 48, 64, 64]
    out = tmp_path / "imagenet"
    val = tmp_path / "val"
    val.mkdir()
    for wnid in sorted(imagenet_sample.iterdir())[:200]:
        (val / wnid.name).symlink_to(wnid)
    result = prep("imagenet", "--train", imagenet_sample, "--val", val, "--out", out, "--max-res", "96",
                  "--write-mode", "jpg", "--workers", "2")
    assert result.returncode == 0, result.stderr
    cfg.data.path = str(out)
    cfg.model.num_classes = 200
    cfg.data.mean, cfg.data.std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    cfg.data.val_image_size = 40
    bundle = build_loaders(cfg, runtime(), 50)
    shapes = {}
    for epoch in (0, 2, 3):
        images, _ = batches(bundle, epoch)[0]
        shapes[epoch] = tuple(images.shape)
    assert shapes == {0: (50, 3, 32, 32), 2: (50, 3, 48, 48), 3: (50, 3, 64, 64)}
    val_images, _, _ = next(iter(bundle.val))
    assert tuple(val_images.shape) == (50, 3, 40, 40)


def test_ffcv_backend_refuses_cifar_recipe_on_images_of_another_size(shapes_dir):
    from visiontrain.infra.errors import UsageError

    with pytest.raises(UsageError, match="not all 32x32"):
        build_loaders(cfg_for(shapes_dir, "ffcv", "data.image_size=32", "data.crop_padding=2"), runtime(), 32)


def test_more_decoding_threads_than_numba_can_start_use_the_cores_there_are_with_one_line(shapes_dir, caplog,
                                                                                          monkeypatch):
    """A config written for a 96-core node runs on a workstation: the thread count is a speed setting, the
    batches do not depend on it."""
    import numba

    from visiontrain.data import ffcv_loader

    monkeypatch.setattr(ffcv_loader, "_threads_noted", set())  # said once per process: this test hears it

    limit = numba.config.NUMBA_NUM_THREADS
    wanted = batches(build_loaders(cfg_for(shapes_dir, "ffcv", "data.cutout=4"), runtime(), 32), epoch=1)
    with caplog.at_level("WARNING"):
        many = build_loaders(cfg_for(shapes_dir, "ffcv", "data.cutout=4", f"data.num_workers={limit + 6}"),
                             runtime(), 32)
    notes = [r.getMessage() for r in caplog.records if "data.num_workers" in r.getMessage()]
    assert notes == [f"data.num_workers {limit + 6}: the FFCV loader decodes in numba threads, at most {limit} on "
                     f"this machine (its CPU cores, or NUMBA_NUM_THREADS); using {limit}"]
    got = batches(many, epoch=1)
    assert len(got) == len(wanted) == 12 and all(torch.equal(a[0], b[0]) for a, b in zip(wanted, got))


def test_batch_buffers_are_allocated_once_while_the_resolution_stays(shapes_dir):
    cfg = cfg_for(shapes_dir, "ffcv", "data.recipe=imagenet", "data.progressive_resizing=true",
                  "data.min_res=16", "data.max_res=32", "data.res_multiple=16", "data.ramp_start_epoch=1",
                  "data.ramp_end_epoch=2", "train.epochs=3")
    train = build_loaders(cfg, runtime(), 64).train
    graph = train.loader.graph
    seen = []
    allocate = graph.allocate_memory
    graph.allocate_memory = lambda *args: seen.append(allocate(*args)) or seen[-1]
    sizes = []
    for epoch in (0, 0, 1, 2, 2):
        train.set_epoch(epoch)
        sizes.append([images.shape[-1] for images, _ in train][0])
    assert sizes == [16, 16, 16, 32, 32]
    assert seen[0] is seen[1] is seen[2] and seen[3] is seen[4] and seen[3] is not seen[0]
