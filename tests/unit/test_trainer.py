"""The Trainer in-process: gradient accumulation and clipping mean what they say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visiontrain.config import load_config
from visiontrain.parallel.runtime import init_runtime
from visiontrain.train.run import build_run
from visiontrain.train.trainer import Trainer


@pytest.fixture(scope="module")
def runtime():
    return init_runtime("cpu")


def linear_model() -> nn.Module:
    """No BatchNorm: its batch statistics would make micro-batch size matter."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))


def train_one_epoch(shapes_dir, tmp_path, runtime, *overrides: str) -> Trainer:
    cfg = load_config("configs/demo/train.yaml", [
        "data.loader=torchvision", f"data.path={shapes_dir}", f"run.dir={tmp_path}", "data.image_size=16",
        "data.val_image_size=16",
        "data.num_workers=0", "train.batch_size=64", "train.epochs=2", "schedule.warmup_epochs=0",
        "log.progress_bar=false", "log.tensorboard=false", "model.channels_last=false", *overrides])
    trainer = build_run(cfg, model=linear_model(), runtime=runtime).trainer
    trainer.train_one_epoch(0)
    return trainer


def test_two_accumulated_micro_batches_equal_one_full_batch(shapes_dir, tmp_path, runtime):
    full = train_one_epoch(shapes_dir, tmp_path / "full", runtime)
    accum = train_one_epoch(shapes_dir, tmp_path / "accum", runtime, "train.grad_accum_steps=2")
    assert accum.data.train.micro_batch == accum.plan.micro_batch == 32
    assert full.data.train.micro_batch == full.plan.micro_batch == 64
    assert accum.state.step == full.state.step == 6  # optimizer steps, not micro-batches
    for a, b in zip(full.model.parameters(), accum.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    moved = sum(float((p - q).detach().abs().sum())
                for p, q in zip(full.model.parameters(), linear_model().parameters()))
    assert moved > 1e-3  # the comparison is not between two untrained models


def test_gradient_clipping_bounds_every_update(shapes_dir, tmp_path, runtime):
    """Plain SGD: each step moves the weights by lr x clipped gradient, norm <= lr x clip."""
    common = ("optim.momentum=0", "optim.weight_decay=0", "schedule.name=constant", "optim.lr=0.5")
    initial = torch.cat([p.detach().flatten() for p in linear_model().parameters()])
    clipped = train_one_epoch(shapes_dir, tmp_path / "clip", runtime, *common, "train.grad_clip_norm=0.01")
    free = train_one_epoch(shapes_dir, tmp_path / "free", runtime, *common)

    def distance(trainer: Trainer) -> float:
        return float((torch.cat([p.detach().flatten() for p in trainer.model.parameters()]) - initial).norm())

    assert distance(clipped) <= 6 * 0.5 * 0.01 + 1e-6  # 6 steps
    assert distance(free) > 10 * distance(clipped)


def test_compile_mode_reaches_torch_compile(shapes_dir, tmp_path, runtime, monkeypatch):
    modes = []

    def recording_compile(module, mode=None, **_):
        modes.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", recording_compile)
    for mode in ("default", "reduce-overhead"):
        cfg = load_config("configs/demo/train.yaml", [
            "data.loader=random", f"run.dir={tmp_path / mode}", "log.tensorboard=false", "log.progress_bar=false",
            "model.compile=true", f"model.compile_mode={mode}"])
        build_run(cfg, model=linear_model(), runtime=runtime)
    assert modes == ["default", "reduce-overhead"]


def test_an_ema_started_on_resume_from_a_checkpoint_without_one_is_the_one_that_trains(shapes_dir, tmp_path, runtime):
    first = train_one_epoch(shapes_dir, tmp_path, runtime)
    first.save_checkpoint(periodic=True, best=False)
    cfg = load_config("configs/demo/train.yaml", [
        "data.loader=torchvision", f"data.path={shapes_dir}", f"run.dir={tmp_path}", "data.image_size=16",
        "data.val_image_size=16", "data.num_workers=0", "train.batch_size=64", "train.epochs=2",
        "schedule.warmup_epochs=0", "log.progress_bar=false", "log.tensorboard=false", "model.channels_last=false",
        "train.ema=true"])
    resumed = build_run(cfg, model=linear_model(), runtime=runtime).trainer
    assert resumed.state.epoch == 0 and resumed.state.step == 6  # resumed after the first epoch's 6 steps
    ema = resumed.ema
    resumed.state.epoch, resumed.state.batch_in_epoch = 1, 0  # what fit() does between epochs
    resumed.train_one_epoch(1)
    assert resumed.state.step == 12
    assert resumed.ema is ema and int(ema.n_averaged) == 6  # the evaluated, checkpointed EMA saw every step


def test_a_metrics_write_that_fails_is_kept_for_the_agreement_not_raised_on_rank_0_alone(tmp_path):
    """Raised on rank 0 alone, the others would wait in the next step: the first failure is kept (naming the
    file), later writes are skipped, and the trainer raises it where every rank agrees (its next checkpoint)."""
    import errno

    from visiontrain.train.logs import MetricsLog

    path = tmp_path / "gone" / "metrics.jsonl"
    metrics = MetricsLog(path, world_size=2, enabled=True)
    record = metrics.write("train", step=1, loss=0.5)
    assert record["loss"] == 0.5 and metrics.failure is not None
    assert metrics.failure.errno == errno.ENOENT and metrics.failure.filename == str(path)
    first = metrics.failure
    (tmp_path / "gone").mkdir()
    metrics.write("train", step=2, loss=0.4)
    assert metrics.failure is first and not path.exists()
