import multiprocessing
import os
import pickle
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import build_loaders
from visiontrain.config import DataConfig, load_config
from visiontrain.data.augment import AsIs, Cutout, Recipe, eval_recipe, train_recipe
from visiontrain.data.base import DeviceNormalizer
from visiontrain.data.torch_loader import EvalTransform, TrainTransform
from visiontrain.infra.errors import UsageError
from visiontrain.parallel.runtime import Runtime

CPU = torch.device("cpu")


def runtime(rank: int = 0, world: int = 1) -> Runtime:
    return Runtime(accelerator=None, device=CPU, rank=rank, world_size=world, local_rank=rank, launcher="single")


def tiny_cfg(path: Path, *extra: str):
    return load_config("configs/demo/train.yaml", ["data.loader=torchvision", f"data.path={path}",
                                                   "data.image_size=16", "data.val_image_size=16",
                                                   "data.crop_padding=2", "data.num_workers=0", *extra])


def test_image_folder_batches_arrive_normalized_channels_last_on_device(shapes_dir):
    bundle = build_loaders(tiny_cfg(shapes_dir), runtime(), 32)
    assert bundle.num_classes == 10 and bundle.train_samples == 400 and bundle.class_names[0] == "bar"
    assert bundle.train.steps_per_epoch == 400 // 32
    bundle.train.set_epoch(0)
    images, labels = next(iter(bundle.train))
    assert images.dtype == torch.float32 and images.shape == (32, 3, 16, 16)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert -2.5 < images.mean() < 2.5 and labels.max() < 10
    counted = sum(int(valid.sum()) for _, _, valid in bundle.val)
    assert counted == bundle.val.num_samples == 110


def test_augmentation_depends_only_on_seed_epoch_and_index(shapes_dir):
    """Same batches with 0 or 2 workers, and a mid-epoch start replays the tail exactly."""
    def epoch_batches(workers: int, start: int = 0):
        bundle = build_loaders(tiny_cfg(shapes_dir, f"data.num_workers={workers}", "data.cutout=4"), runtime(), 32)
        bundle.train.set_epoch(3, start=start)
        return [images for images, _ in bundle.train]

    full = epoch_batches(0)
    assert all(torch.equal(a, b) for a, b in zip(full, epoch_batches(2)))
    tail = epoch_batches(0, start=5)
    assert len(tail) == len(full) - 5 and all(torch.equal(a, b) for a, b in zip(full[5:], tail))
    first_again = epoch_batches(0)[0]
    assert torch.equal(first_again, full[0])


def test_loader_workers_start_when_built_before_any_thread_of_the_run(shapes_dir):
    """Workers fork while the process has no helper threads (TensorBoard, progress bar, queue feeders):
    a process forked while threads run can inherit a lock nobody releases. Their first epoch and
    evaluation still see every batch."""
    threads_before, rng_before = threading.active_count(), torch.get_rng_state()
    bundle = build_loaders(tiny_cfg(shapes_dir, "data.num_workers=2"), runtime(), 32)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the model's initialization does not depend on the loader
    workers = multiprocessing.active_children()
    assert len(workers) == 4  # 2 for training, 2 for evaluation
    assert threading.active_count() == threads_before
    bundle.train.set_epoch(1, start=2)
    assert sum(len(labels) for _, labels in bundle.train) == (400 // 32 - 2) * 32
    assert sum(int(valid.sum()) for _, _, valid in bundle.val) == 110
    assert sorted(w.pid for w in multiprocessing.active_children()) == sorted(w.pid for w in workers)


def test_ranks_read_disjoint_training_samples(shapes_dir):
    cfg = tiny_cfg(shapes_dir)
    shards = []
    for rank in range(2):
        bundle = build_loaders(cfg, runtime(rank, 2), 16)
        bundle.train.set_epoch(0)
        shards.append(set(bundle.train.epoch_indices()))
    assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == 192


def _write_cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(path, "wb") as f:
        pickle.dump({"data": data, "labels": labels}, f)


def test_cifar_pickle_layout_is_read_with_its_class_names(tmp_path):
    root = tmp_path / "cifar" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in (1, 2):
        _write_cifar_batch(root / f"data_batch_{i}", rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8),
                           [k % 10 for k in range(40)])
    val_images = rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    _write_cifar_batch(root / "test_batch", val_images, [k % 10 for k in range(20)])
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    cfg = load_config(None, ["data.loader=torchvision", f"data.path={tmp_path / 'cifar'}", "data.num_workers=0",
                             "model.channels_last=false"])
    bundle = build_loaders(cfg, runtime(), 16)
    assert bundle.class_names == names and bundle.train_samples == 80
    images, labels, valid = next(iter(bundle.val))
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    expected = (torch.from_numpy(val_images[:16]).permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(images, expected, atol=1e-5)  # exact pixels, exact normalization
    assert labels.tolist() == [k % 10 for k in range(16)]


class _Smuggled:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_batch_with_foreign_objects_is_refused(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump({"data": _Smuggled(), "labels": []}, f)
    (root / "test_batch").write_bytes((root / "data_batch_1").read_bytes())
    cfg = load_config(None, ["data.loader=torchvision", f"data.path={tmp_path}"])
    with pytest.raises(UsageError, match="is not a CIFAR-10 batch file.*posix.getcwd"):
        build_loaders(cfg, runtime(), 16)
    with open(root / "batches.meta", "wb") as f:  # the class names' file, too
        pickle.dump({"label_names": _Smuggled()}, f)
    with pytest.raises(UsageError, match="batches.meta is not a CIFAR-10 batches.meta file.*posix.getcwd"):
        build_loaders(cfg, runtime(), 16)


def test_val_classes_must_match_train_classes(shapes_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(shapes_dir, broken)
    shutil.rmtree(broken / "val" / "star")
    with pytest.raises(UsageError, match="differ from the training classes.*star"):
        build_loaders(tiny_cfg(broken), runtime(), 32)


def test_num_classes_must_match_the_dataset(shapes_dir):
    with pytest.raises(UsageError, match="model.num_classes' = 5 but the dataset .* has 10 classes"):
        build_loaders(tiny_cfg(shapes_dir, "model.num_classes=5"), runtime(), 32)


def test_batch_larger_than_the_dataset_is_a_usage_error(shapes_dir):
    with pytest.raises(UsageError, match="do not fill one optimizer step"):
        build_loaders(tiny_cfg(shapes_dir), runtime(), 1024)


def test_cutout_fills_one_square_with_the_mean_colour():
    images = [np.full((16, 16, 3), 7, dtype=np.uint8)] * 50
    out = TrainTransform(Recipe(AsIs(16), (Cutout(4, (1, 2, 3)),)), seed=0)(images, np.arange(50, dtype=np.uint64), 0)
    changed = (out != 7).any(dim=1)
    assert (changed.sum(dim=(1, 2)) == 16).all()
    assert out.permute(1, 0, 2, 3)[:, changed].unique(dim=1).tolist() == [[1], [2], [3]]
    squares = {tuple(torch.nonzero(mask).min(dim=0).values.tolist()) for mask in changed}
    assert len(squares) > 10  # the square moves from image to image


def test_imagenet_recipe_sizes():
    from PIL import Image

    cfg = DataConfig(recipe="imagenet", image_size=64, val_image_size=56, val_crop_ratio=0.875)
    photo = Image.new("RGB", (300, 200), (10, 20, 30))
    indices = np.array([0], dtype=np.uint64)
    assert TrainTransform(train_recipe(cfg), seed=0)([photo], indices, 0).shape == (1, 3, 64, 64)
    assert EvalTransform(eval_recipe(cfg))([photo]).shape == (1, 3, 56, 56)


def test_device_normalizer_matches_the_formula():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = DeviceNormalizer([0.5, 0.4, 0.3], [0.2, 0.2, 0.25], CPU, channels_last=True)(images)
    expected = (images.float() / 255 - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.2, 0.25]).view(1, 3, 1, 1)
    assert torch.allclose(out, expected, atol=1e-5) and out.is_contiguous(memory_format=torch.channels_last)


def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    from PIL import Image

    from visiontrain.data.sources import read_image

    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    pixels = np.asarray(read_image(tmp_path / "deep.png"))
    assert pixels.shape == (32, 32, 3) and (pixels[..., 0] == pixels[..., 2]).all()
    np.testing.assert_array_equal(pixels[..., 0], np.round(ramp / 257).astype(np.uint8))  # clipping made 99.6 % white
    Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / "eight.png")  # 8-bit greyscale: as before
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "eight.png"))[..., 1], ramp // 257)
    # the .beton writer reads it the same way: the loaders stay pixel-identical
    from visiontrain.data.prep.beton import _WriterDataset
    from visiontrain.data.sources import Samples

    written, _ = _WriterDataset(Samples(["a"], [0], [tmp_path / "deep.png"]))[0]
    np.testing.assert_array_equal(written, pixels)
