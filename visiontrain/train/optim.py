"""Optimizer with parameter groups, and the per-iteration learning-rate schedule.

The schedule is a pure function of the optimizer step (`lr_factor`), wrapped in
`torch.optim.lr_scheduler.LambdaLR` and stepped by the trainer once per optimizer
step. It is never handed to accelerate, whose prepared schedulers step once per
process (seen with accelerate 1.x: a StepLR stepped 2x per call on 2 processes).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from visiontrain.config import OptimConfig, ScheduleConfig
from visiontrain.infra.errors import UsageError
from visiontrain.models.contract import ModelSpec


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float, no_decay_bn_bias: bool,
    backbone_lr_mult: float = 1.0, is_head: Callable[[str], bool] = lambda name: False,
) -> list[dict]:
    """Trainable parameters in up to four groups: head or backbone, decayed or not (BN/bias: 1-D tensors).

    Each group carries its own peak `lr` (backbone: lr * backbone_lr_mult); the schedule
    scales every group by the same factor, so warmup applies to all of them.
    """
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue  # frozen parameters get no optimizer state
        part = "head" if is_head(name) else "backbone"
        decayed = not (no_decay_bn_bias and param.ndim <= 1)
        groups.setdefault((part, decayed), []).append(param)
    return [
        {"params": params, "name": f"{part}{'' if decayed else '_no_decay'}",
         "lr": lr * (backbone_lr_mult if part == "backbone" else 1.0),
         "weight_decay": weight_decay if decayed else 0.0}
        for (part, decayed), params in sorted(groups.items(), key=lambda item: (item[0][0] != "backbone",
                                                                                   not item[0][1]))
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, spec: ModelSpec, deepspeed: bool = False
                    ) -> torch.optim.Optimizer:
    """`deepspeed`: the optimizer DeepSpeed will wrap gets the foreach update. ZeRO-1/2 step it on
    their own flattened fp32 partitions, and there the fused one did not reproduce DDP's training
    (losses 8e-4 apart after 25 steps, where foreach matches DDP to 1e-4)."""
    groups = param_groups(model.named_parameters(), cfg.lr, cfg.weight_decay, cfg.no_decay_bn_bias,
                          cfg.backbone_lr_mult, spec.is_head)
    if not groups:
        raise UsageError("no parameter is trainable (finetune.freeze left nothing to train)")
    # fused: one kernel updates every parameter (CPU and CUDA); foreach: a few kernels per group.
    implementation = {"fused": True} if cfg.fused and not deepspeed else {"foreach": True}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               **implementation)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **implementation)


def keep_implementation(optimizer: torch.optim.Optimizer) -> None:
    """After `load_state_dict`: the configured fused/foreach choice, not the checkpoint's.

    Loading replaces each parameter group with the saved one, flags included, so a run
    resumed with another `optim.fused` would silently keep the old implementation (and
    the GradScaler, which hands fused optimizers its scale, would break a foreach one).
    Fused updates also keep their step counters on the parameter's device as float32.
    """
    fused = bool(optimizer.defaults.get("fused"))
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = optimizer.defaults.get("fused"), optimizer.defaults.get("foreach")
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if torch.is_tensor(step):
                optimizer.state[param]["step"] = (step.to(param.device, torch.float32) if fused
                                                  else step.to("cpu", torch.float32))


def lr_factor(step: int, cfg: ScheduleConfig, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based): warmup, then the decay."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        passed = sum(step >= round(m * steps_per_epoch) for m in cfg.milestones)
        return cfg.gamma**passed
    progress = (step - warmup) / max(1, total_steps - warmup)
    progress = min(1.0, progress)
    floor = cfg.min_lr_ratio
    if cfg.name == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # triangular: linear ramp up (the warmup), then linear down to the floor (FFCV's recipes)
    return floor + (1 - floor) * (1 - progress)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    total = steps_per_epoch * epochs
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch, total)
    )
