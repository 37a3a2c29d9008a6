"""Training end to end on the less common data paths: the device loader ends with the torchvision loader's weights,
and betons written by FFCV's own writer, once described, train."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import ffcv_write, ok, prep, read_json, run_train, tiny_args
from visiontrain.checkpoint.weights import read_weights

pytestmark = pytest.mark.slow
RECIPE = ("data.crop_padding=2", "data.cutout=4")


def test_training_on_the_device_loader_ends_with_the_torchvision_runs_weights(shapes_dir, tmp_path):
    runs = {}
    for loader in ("device", "torchvision"):
        runs[loader] = tmp_path / loader
        ok(run_train(tiny_args(shapes_dir, runs[loader], "data.num_workers=0", *RECIPE, loader=loader), nproc=2))
    a, b = (read_weights(runs[name] / "weights.safetensors") for name in ("device", "torchvision"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = read_json(runs["device"] / "summary.json")
    assert summary["world_size"] == 2 and summary["final"]["samples"] == 110


COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])


def coloured_noise(per_class: int, seed: int) -> list[tuple[np.ndarray, int]]:
    """16x16 images of 4 classes told apart by their mean colour under heavy noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(COLOURS)), per_class))
    noisy = COLOURS[labels][:, None, None, :] + rng.normal(0, 40, (len(labels), 16, 16, 3))
    return list(zip(np.clip(noisy, 0, 255).astype(np.uint8), labels.tolist()))


def test_training_reads_described_ffcv_betons_and_learns(tmp_path):
    from visiontrain.config import load_config
    from visiontrain.data.ffcv_loader import check_dataset_files
    from visiontrain.infra.errors import UsageError

    data = tmp_path / "data"
    data.mkdir()
    ffcv_write(data / "train.beton", coloured_noise(64, seed=0))
    ffcv_write(data / "val.beton", coloured_noise(16, seed=1))
    cfg = load_config("configs/demo/train.yaml", [f"data.path={data}", "data.image_size=16", "data.val_image_size=16"])
    with pytest.raises(UsageError, match=f"no meta.json .*`python -m visiontrain prep describe --beton {data}"):
        check_dataset_files(data, cfg.data, ("train", "val"))

    described = prep("describe", "--beton", data, "--class-names", "red,green,blue,yellow")
    assert described.returncode == 0, described.stderr
    assert "model.num_classes=4 data.image_size=16 data.val_image_size=16" in described.stdout
    run_dir = tmp_path / "run"
    ok(run_train(tiny_args(data, run_dir, "model.num_classes=4", loader="ffcv")))
    summary = read_json(run_dir / "summary.json")
    assert summary["world_size"] == 1 and summary["epochs"] == 2
    assert summary["steps"] == 2 * (256 // 64)  # 256 training images, whole batches of 64
    assert summary["final"]["samples"] == 64  # every val image once
    assert summary["final"]["top1"] > 50  # chance is 25 % on 4 balanced classes
    assert summary["class_names"] == ["red", "green", "blue", "yellow"]
