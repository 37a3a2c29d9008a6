import math

import pytest
import torch

from visiontrain.config import ModelConfig, OptimConfig, ScheduleConfig
from visiontrain.infra.errors import UsageError
from visiontrain.models import build_model, spec_of
from visiontrain.train.optim import build_optimizer, build_scheduler, lr_factor

RESNET18 = spec_of("resnet18")


def factors(cfg: ScheduleConfig, steps_per_epoch: int, epochs: int) -> list[float]:
    total = steps_per_epoch * epochs
    return [lr_factor(s, cfg, steps_per_epoch, total) for s in range(total)]


def test_warmup_is_linear_then_cosine_reaches_the_floor():
    f = factors(ScheduleConfig(name="cosine", warmup_epochs=1, min_lr_ratio=0.1), 10, 5)
    assert f[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert f[10] == pytest.approx(1.0)
    assert f[30] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 20 / 40)))
    assert f[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_triangular_ramps_up_then_linearly_down():
    f = factors(ScheduleConfig(name="triangular", warmup_epochs=2), 5, 10)
    assert max(f) == pytest.approx(1.0) and f.index(max(f)) in (9, 10)
    assert f[10] - f[11] == pytest.approx(f[20] - f[21])  # linear decay
    assert f[-1] == pytest.approx(1 / 40)


def test_step_schedule_multiplies_by_gamma_at_each_milestone():
    f = factors(ScheduleConfig(name="step", warmup_epochs=0, milestones=[2, 4], gamma=0.1), 3, 6)
    assert f[:6] == [1.0] * 6 and f[6:12] == pytest.approx([0.1] * 6) and f[12:] == pytest.approx([0.01] * 6)


def test_scheduler_steps_per_iteration_on_the_optimizer():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, OptimConfig(lr=0.4), RESNET18)
    sched = build_scheduler(opt, ScheduleConfig(name="constant", warmup_epochs=1), steps_per_epoch=4, epochs=3)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])


def test_no_weight_decay_on_bn_and_bias_when_asked():
    model = build_model(ModelConfig(name="resnet18"))
    opt = build_optimizer(model, OptimConfig(weight_decay=5e-4, no_decay_bn_bias=True), RESNET18)
    groups = {g["name"]: g for g in opt.param_groups}
    assert sorted(groups) == ["backbone", "backbone_no_decay", "head", "head_no_decay"]
    for name in ("backbone", "head"):
        assert groups[name]["weight_decay"] == 5e-4 and all(p.ndim > 1 for p in groups[name]["params"])
        plain = groups[f"{name}_no_decay"]
        assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    single = build_optimizer(model, OptimConfig(weight_decay=5e-4, no_decay_bn_bias=False), RESNET18)
    assert [g["name"] for g in single.param_groups] == ["backbone", "head"]


def test_backbone_lr_mult_scales_every_group_but_the_head_and_warmup_applies_to_all():
    model = build_model(ModelConfig(name="resnet18", num_classes=5))
    opt = build_optimizer(model, OptimConfig(lr=0.4, backbone_lr_mult=0.1), RESNET18)
    head_params = {id(p) for p in model.fc.parameters()}
    for group in opt.param_groups:
        in_head = {id(p) in head_params for p in group["params"]}
        assert in_head == {group["name"].startswith("head")}
        assert group["lr"] == pytest.approx(0.4 if group["name"].startswith("head") else 0.04)
    sched = build_scheduler(opt, ScheduleConfig(name="constant", warmup_epochs=1), steps_per_epoch=2, epochs=3)
    firsts = {g["name"]: g["lr"] for g in opt.param_groups}
    opt.step()
    sched.step()
    seconds = {g["name"]: g["lr"] for g in opt.param_groups}
    assert firsts["head"] == pytest.approx(0.2) and firsts["backbone"] == pytest.approx(0.02)
    assert seconds["head"] == pytest.approx(0.4) and seconds["backbone"] == pytest.approx(0.04)


def test_sgd_is_nesterov_and_adamw_uses_betas():
    model = torch.nn.Linear(2, 2)
    assert build_optimizer(model, OptimConfig(name="sgd"), RESNET18).defaults["nesterov"] is True
    adamw = build_optimizer(model, OptimConfig(name="adamw", betas=[0.8, 0.95]), RESNET18)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.95)


def test_frozen_parameters_get_no_optimizer_group_entry():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    opt = build_optimizer(model, OptimConfig(), RESNET18)
    assert sum(len(g["params"]) for g in opt.param_groups) == 2


def test_nothing_trainable_is_a_usage_error():
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(UsageError, match="no parameter is trainable"):
        build_optimizer(model, OptimConfig(), RESNET18)


def test_warmup_can_start_above_zero():
    f = factors(ScheduleConfig(name="triangular", warmup_epochs=1, warmup_start_ratio=0.2, min_lr_ratio=0.07), 10, 3)
    assert f[:10] == pytest.approx([0.2 + 0.8 * (i + 1) / 10 for i in range(10)])
    assert f[-1] == pytest.approx(0.07 + 0.93 / 20)


def test_norm_bias_lr_mult_scales_the_norm_shifts_lr_and_keeps_their_decay_per_step():
    model = build_model(ModelConfig(name="cifar_fast", width=8, bn_scale="frozen"))
    spec = spec_of("cifar_fast")
    opt = build_optimizer(model, OptimConfig(lr=1.5, weight_decay=1e-3, no_decay_bn_bias=False,
                                             norm_bias_lr_mult=64), spec)
    groups = {g["name"]: g for g in opt.param_groups}
    assert sorted(groups) == ["backbone", "backbone_norm_bias", "head"]
    norm_biases = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in groups["backbone_norm_bias"]["params"]} == norm_biases
    assert groups["backbone_norm_bias"]["lr"] == pytest.approx(96)
    for group in groups.values():  # lr x weight_decay: the same decay per step in every group
        assert group["lr"] * group["weight_decay"] == pytest.approx(1.5e-3)
    assert model.whiten.bias in groups["backbone"]["params"]  # a conv bias, not a normalization shift


def test_parameters_trained_briefly_stop_changing_at_their_epoch_despite_momentum_and_decay():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    cfg = OptimConfig(lr=0.1, momentum=0.9, weight_decay=0.1, no_decay_bn_bias=False,
                      freeze_after_params=["0.bias"], freeze_after_epochs=1.5)
    start = model[0].weight.detach().clone()
    opt = build_optimizer(model, cfg, RESNET18)
    brief = [g for g in opt.param_groups if g["name"].endswith("_brief")]
    assert len(brief) == 1 and brief[0]["params"] == [model[0].bias] and brief[0]["train_epochs"] == 1.5
    sched = build_scheduler(opt, ScheduleConfig(name="constant", warmup_epochs=0), steps_per_epoch=4, epochs=4)
    seen = []
    for _ in range(16):
        seen.append(model[0].bias.detach().clone())
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    # steps 0..5 (1.5 epochs of 4) move it; from step 6 on it is fixed, bit for bit
    assert all(not torch.equal(a, b) for a, b in zip(seen[:6], seen[1:7]))
    assert all(torch.equal(seen[6], s) for s in seen[6:])
    assert not torch.equal(model[0].weight, start)  # the rest kept training


def test_an_unknown_parameter_to_freeze_names_the_closest():
    model = build_model(ModelConfig(name="cifar_fast", width=8))
    with pytest.raises(UsageError, match=r"'whiten.bais'.*closest: whiten.bias"):
        build_optimizer(model, OptimConfig(freeze_after_params=["whiten.bais"], freeze_after_epochs=1),
                        spec_of("cifar_fast"))
