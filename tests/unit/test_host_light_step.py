"""The step's bookkeeping: fused optimizer updates, one-pass metrics, the compile mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from visiontrain.config import OptimConfig, load_config
from visiontrain.evaluate.metrics import RunningStats, topk_correct
from visiontrain.infra.errors import UsageError
from visiontrain.models import spec_of
from visiontrain.models.resnets import ResNet9
from visiontrain.train.optim import build_optimizer

RESNET9 = spec_of("resnet9")


def _train(optim: OptimConfig, steps: int = 5) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = ResNet9(10, width=4)
    optimizer = build_optimizer(model, optim, RESNET9)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        images = torch.randn(16, 3, 16, 16, generator=generator)
        labels = torch.randint(0, 10, (16,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_the_fused_update_gives_the_parameters_of_the_per_tensor_update(name):
    lr = 0.1 if name == "sgd" else 1e-3
    fused = _train(OptimConfig(name=name, lr=lr, fused=True))
    foreach = _train(OptimConfig(name=name, lr=lr, fused=False))
    start = _train(OptimConfig(name=name, lr=lr), steps=0)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(fused, foreach))
    assert any(not torch.equal(a, s) for a, s in zip(fused, start))  # they did train
    model = ResNet9(10, width=4)
    assert build_optimizer(model, OptimConfig(name=name, fused=True), RESNET9).defaults["fused"] is True
    assert build_optimizer(model, OptimConfig(name=name, fused=False), RESNET9).defaults["foreach"] is True


def test_one_pass_running_stats_equal_the_per_metric_formulas():
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(64, 10, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    losses = F.cross_entropy(logits, labels, reduction="none")
    valid = torch.rand(64, generator=generator) > 0.3
    stats = RunningStats(torch.device("cpu"))
    stats.update(losses, logits, labels)
    stats.update(losses, logits, labels, valid)
    w = valid.double()
    expected = torch.tensor([
        losses.double().sum() + (losses.double() * w).sum(),
        topk_correct(logits, labels, 1).double().sum() + (topk_correct(logits, labels, 1).double() * w).sum(),
        topk_correct(logits, labels, 5).double().sum() + (topk_correct(logits, labels, 5).double() * w).sum(),
        64 + w.sum(),
    ], dtype=torch.float64)
    assert torch.allclose(stats.sums, expected)
    three = RunningStats(torch.device("cpu"))  # fewer classes than 5: top-5 counts every sample
    three.update(losses[:8], logits[:8, :3], labels[:8] % 3)
    assert three.sums[2] == 8


def test_compile_mode_is_taken_with_compile_and_refused_without():
    cfg = load_config(None, ["model.compile=true", "model.compile_mode=reduce-overhead"])
    assert cfg.model.compile_mode == "reduce-overhead"
    with pytest.raises(UsageError, match="model.compile_mode.*only with model.compile=true"):
        load_config(None, ["model.compile_mode=reduce-overhead"])
    with pytest.raises(UsageError, match="model.compile_mode.*allowed default, reduce-overhead, max-autotune"):
        load_config(None, ["model.compile=true", "model.compile_mode=fast"])


def test_overhead_bench_times_each_piece_of_the_step_bookkeeping():
    from visiontrain.bench.overhead import measure, report

    result = measure(["model.width=4", "train.batch_size=16", "train.ema=true"], steps=2, rounds=1)
    assert set(result.parts_s_per_step) == {"metric sums (RunningStats.update)", "loss record (non-finite check)",
                                            "schedule (LambdaLR.step)", "optimizer, fused", "optimizer, foreach",
                                            "EMA update"}
    assert all(seconds > 0 for seconds in result.parts_s_per_step.values())
    assert "optimizer, fused" in report(result) and "% of a step" in report(result)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_a_checkpoint_of_one_implementation_resumes_with_the_configured_one(name):
    from visiontrain.train.optim import keep_implementation

    lr = 0.1 if name == "sgd" else 1e-3
    torch.manual_seed(0)
    model = ResNet9(10, width=4)
    old = build_optimizer(model, OptimConfig(name=name, lr=lr, fused=False), RESNET9)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    old.step()
    new = build_optimizer(model, OptimConfig(name=name, lr=lr, fused=True), RESNET9)
    new.load_state_dict(old.state_dict())
    assert new.param_groups[0]["fused"] is None  # what loading alone leaves: the checkpoint's choice
    keep_implementation(new)
    assert all(g["fused"] is True and not g["foreach"] for g in new.param_groups)
    # A GradScaler step runs (it hands a fused optimizer its scale, which a foreach group refuses).
    scaler = torch.amp.GradScaler("cpu")
    new.zero_grad()
    scaler.scale(model(torch.randn(4, 3, 16, 16)).sum()).backward()
    scaler.step(new)
    scaler.update()
    back = build_optimizer(model, OptimConfig(name=name, lr=lr, fused=False), RESNET9)
    back.load_state_dict(new.state_dict())
    keep_implementation(back)
    assert all(g["foreach"] is True and not g["fused"] for g in back.param_groups)
    back.step()
