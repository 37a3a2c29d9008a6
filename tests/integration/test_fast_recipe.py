"""configs/cifar10/fast.yaml on real CIFAR-10 images: it learns, whitens its first layer from the data, and
evaluates with its test-time augmentation."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import ok, read_json, read_jsonl, run_train, visiontrain_cli
from visiontrain.checkpoint.weights import read_weights

pytestmark = pytest.mark.slow  # a training run on 2,000 real images, then two evaluations
# The recipe as written, scaled to a CPU and 2,000 images: 31 steps of 64 instead of 44 of 1024.
CPU_SCALE = ("train.epochs=1", "train.batch_size=64", "optim.lr=0.4", "schedule.warmup_epochs=0.3",
             "train.precision=fp32", "run.device=cpu", "log.progress_bar=false", "log.every_steps=10")


def test_fast_recipe_one_epoch_on_2000_real_images_beats_chance_by_far(cifar_2000, tmp_path):
    run_dir = tmp_path / "fast"
    ok(run_train(["-c", "configs/cifar10/fast.yaml", f"data.path={cifar_2000}", f"run.dir={run_dir}", *CPU_SCALE]))
    summary = read_json(run_dir / "summary.json")
    assert summary["final"]["samples"] == 200
    assert summary["final"]["top1"] >= 20.0  # chance is 10 %; 20 % is 4.7 standard deviations above it
    # Evaluation used the recipe's test-time augmentation: evaluate --tta flip_translate gives its loss.
    val = [e for e in read_jsonl(run_dir / "metrics.jsonl") if e["event"] == "val"]
    assert len(val) == 1 and "- tta: `flip_translate`" in (run_dir / "eval" / "report.md").read_text()
    losses = {}
    for tta in ("none", "the run's"):  # evaluate's default is the run's train.tta
        flag = ["--tta", tta] if tta == "none" else []
        result = ok(visiontrain_cli("evaluate", "--weights", run_dir, *flag, "--out", tmp_path / tta))
        losses[tta] = float(result.stdout.split("loss ")[1].split()[0])
    assert "tta flip_translate" in result.stdout
    assert losses["the run's"] == pytest.approx(val[0]["loss"], abs=1e-4)
    assert losses["none"] != losses["the run's"]
    # The first layer is the patch whitening computed from the images: 12 filters and their negatives.
    weights = read_weights(run_dir / "weights.safetensors")
    whiten = weights["whiten.weight"]
    assert whiten.shape == (24, 3, 2, 2) and torch.equal(whiten[12:], -whiten[:12])
