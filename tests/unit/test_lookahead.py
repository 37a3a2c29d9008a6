"""Lookahead (train.lookahead_*) and the fast recipe's other training mechanisms, in the trainer:
a frozen BN scale stays 1, a briefly trained parameter stops at its epoch, and a resumed run
with a lookahead average ends bit-equal to an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visiontrain.config import load_config
from visiontrain.parallel.runtime import init_runtime
from visiontrain.train.lookahead import Lookahead
from visiontrain.train.run import build_run


def test_the_average_follows_its_schedule_and_training_ends_on_it():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    look = Lookahead(model, every_steps=5, decay=0.8, power=3, total_steps=20)
    average = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(1, 21):
        with torch.no_grad():
            for value in model.state_dict().values():
                if value.is_floating_point():
                    value.add_(1.0)  # stands in for an optimizer step (and a BN statistics update)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        look.after_step(step)
        if step % 5:
            assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
            continue
        decay = 0.8 * (step / 20) ** 3
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                average[name] = decay * average[name] + (1 - decay) * before[name]
                torch.testing.assert_close(value, average[name])
    assert int(model[1].num_batches_tracked) == 0  # counters are not averaged
    with torch.no_grad():
        model[0].weight.add_(5.0)
    look.finish()
    torch.testing.assert_close(model[0].weight, average["0.weight"])


@pytest.fixture(scope="module")
def runtime():
    return init_runtime("cpu")


def fast_mechanisms(shapes_dir, run_dir, *overrides: str):
    cfg = load_config("configs/demo/train.yaml", [
        "data.loader=torchvision", f"data.path={shapes_dir}", f"run.dir={run_dir}", "data.image_size=16",
        "data.val_image_size=16", "data.num_workers=0", "train.batch_size=50", "train.epochs=3",
        "model.name=cifar_fast", "model.width=8", "model.bn_scale=frozen", "model.bn_momentum=0.4",
        "model.conv_init=dirac", "optim.norm_bias_lr_mult=16", "optim.freeze_after_params=[whiten.bias]",
        "optim.freeze_after_epochs=1", "train.lookahead_every_steps=3", "schedule.warmup_epochs=1",
        "schedule.warmup_start_ratio=0.2", "checkpoint.every_epochs=1", "checkpoint.keep_last=5",
        "log.progress_bar=false", "log.tensorboard=false", "log.report=false", "log.plots=false",
        "model.channels_last=false", *overrides])
    return build_run(cfg, runtime=runtime_of()).trainer


_RUNTIME = []


def runtime_of():
    if not _RUNTIME:
        _RUNTIME.append(init_runtime("cpu"))
    return _RUNTIME[0]


def test_a_frozen_scale_stays_one_and_a_briefly_trained_bias_stops_at_its_epoch(shapes_dir, tmp_path):
    # Without lookahead, which also averages parameters that no longer train (as airbench's does).
    trainer = fast_mechanisms(shapes_dir, tmp_path, "train.lookahead_every_steps=0")
    start_bias = trainer.model.whiten.bias.detach().clone()
    trainer.fit()
    norms = [m for m in trainer.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all()) and not m.weight.requires_grad for m in norms)
    assert all(float(m.running_var.sub(1).abs().max()) > 1e-3 for m in norms)  # trained on batch statistics
    checkpoints = sorted((tmp_path / "checkpoints").glob("step_*.pt"))
    after_epoch = [torch.load(p, weights_only=True)["model"]["whiten.bias"] for p in checkpoints]
    assert len(after_epoch) == 3 and trainer.steps_per_epoch == 8
    assert not torch.equal(after_epoch[0], start_bias)  # trained in epoch 1 ...
    assert torch.equal(after_epoch[0], after_epoch[1]) and torch.equal(after_epoch[1], after_epoch[2])  # ... only


def test_a_run_resumed_with_its_lookahead_average_equals_an_uninterrupted_one(shapes_dir, tmp_path):
    whole = fast_mechanisms(shapes_dir, tmp_path / "whole")
    whole.fit()
    first = fast_mechanisms(shapes_dir, tmp_path / "split")
    first.train_one_epoch(0)
    first.state.epoch, first.state.batch_in_epoch = 1, 0  # what fit() does between epochs
    first.save_checkpoint(periodic=True, best=False)
    resumed = fast_mechanisms(shapes_dir, tmp_path / "split")
    assert resumed.state.step == 8 and resumed.lookahead is not None
    resumed.fit()
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    without = fast_mechanisms(shapes_dir, tmp_path / "without", "train.lookahead_every_steps=0")
    without.fit()
    assert not torch.equal(without.model.fc.weight, whole.model.fc.weight)  # the lookahead changed the run


def test_a_run_shorter_than_one_interval_ends_on_its_own_weights():
    model = nn.Linear(2, 2)
    look = Lookahead(model, every_steps=5, decay=0.8, power=3, total_steps=3)
    with torch.no_grad():
        model.weight.add_(1.0)
    trained = model.weight.detach().clone()
    for step in (1, 2, 3):
        look.after_step(step)
    look.finish()
    assert torch.equal(model.weight, trained)  # not the initial weights the average started from


def test_the_logged_lr_is_the_schedules_not_a_group_with_its_own_multiplier(shapes_dir, tmp_path):
    trainer = fast_mechanisms(shapes_dir, tmp_path)
    groups = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    # optim.norm_bias_lr_mult=16: BN shifts (not decayed in the demo config) at 16x the schedule's lr
    assert groups["backbone_no_decay_norm_bias"] == pytest.approx(16 * groups["backbone"])
    assert trainer._lr() == pytest.approx(groups["backbone"]) and trainer._lr() == max(
        lr for name, lr in groups.items() if not name.endswith(("_norm_bias", "_brief")))
