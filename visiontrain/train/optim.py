"""Optimizer with parameter groups, and the per-iteration learning-rate schedule.

The schedule is a pure function of the optimizer step (`lr_factor`), wrapped in
`torch.optim.lr_scheduler.LambdaLR` and stepped by the trainer once per optimizer
step. It is never handed to accelerate, whose prepared schedulers step once per
process (seen with accelerate 1.x: a StepLR stepped 2x per call on 2 processes).
"""

from __future__ import annotations

import difflib
import math
from typing import Callable, Iterable

import torch
from torch import nn

from visiontrain.config import OptimConfig, ScheduleConfig
from visiontrain.infra.errors import UsageError
from visiontrain.models.contract import ModelSpec


def norm_bias_names(model: nn.Module) -> set[str]:
    """Parameter names of the normalization layers' shifts (what optim.norm_bias_lr_mult scales)."""
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    return {f"{module_name}.bias" if module_name else "bias"
            for module_name, module in model.named_modules()
            if isinstance(module, norms) and getattr(module, "bias", None) is not None}


def frozen_later(names: Iterable[str], patterns: list[str]) -> set[str]:
    """The names that optim.freeze_after_params selects (exact names or dotted prefixes); an unmatched
    pattern is a usage error naming the closest parameter names."""
    names = list(names)
    chosen: set[str] = set()
    for pattern in patterns:
        matched = {n for n in names if n == pattern or n.startswith(pattern.rstrip(".") + ".")}
        if not matched:
            close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
            raise UsageError(f"optim.freeze_after_params: no trainable parameter is named {pattern!r}"
                             + (f"; closest: {', '.join(close)}" if close else ""))
        chosen |= matched
    return chosen


def check_trainable(model: nn.Module, cfg: OptimConfig) -> list[str]:
    """The trainable parameter names; a usage error if there is none or if optim.freeze_after_params names
    one that does not exist. `build_run` calls it before the run directory is first written."""
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    if not trainable:
        raise UsageError("no parameter is trainable (finetune.freeze left nothing to train)")
    frozen_later(trainable, cfg.freeze_after_params)
    return trainable


def layer_decay_scales(model: nn.Module, spec: ModelSpec, decay: float) -> dict[str, float]:
    """optim.layer_decay: {parameter name: lr scale}. The head, and a final norm after the last block, keep the
    full lr, each block below one more factor of `decay`, the stem the smallest (BEiT/timm's grouping)."""
    if decay == 1.0:
        return {}
    depths, blocks = spec.depths(model, True)
    top = blocks + 1  # the head's depth; what follows the blocks (blocks + 1) shares it, as in timm
    return {name: decay ** max(0, top - depth) for name, depth in depths.items()}


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float, no_decay_bn_bias: bool,
    backbone_lr_mult: float = 1.0, is_head: Callable[[str], bool] = lambda name: False,
    norm_biases: set[str] = frozenset(), norm_bias_lr_mult: float = 1.0,
    train_briefly: set[str] = frozenset(), train_epochs: float = 0.0,
    layer_scales: dict[str, float] | None = None, no_decay: set[str] = frozenset(),
) -> list[dict]:
    """Trainable parameters in groups: head or backbone, layer (with optim.layer_decay), decayed or not
    (BN/bias: 1-D tensors, and `no_decay`: position embeddings, class tokens), and apart when they are
    normalization shifts with their own lr multiplier or train only briefly.

    Each group carries its own peak `lr` (backbone: lr * backbone_lr_mult; times its layer's scale;
    normalization shifts: also * norm_bias_lr_mult, with weight_decay / norm_bias_lr_mult, so
    lr * weight_decay is unchanged); the schedule scales every group by the same factor, so warmup
    applies to all of them. A group with `train_epochs` > 0 has its lr set to 0 from that epoch on
    (build_scheduler).
    """
    layer_scales = layer_scales or {}
    groups: dict[tuple[str, float, bool, bool, bool], list[nn.Parameter]] = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue  # frozen parameters get no optimizer state
        part = "head" if is_head(name) else "backbone"
        decayed = not (no_decay_bn_bias and (param.ndim <= 1 or name in no_decay))
        scaled = norm_bias_lr_mult != 1.0 and name in norm_biases
        layer = layer_scales.get(name, 1.0)
        groups.setdefault((part, layer, decayed, scaled, name in train_briefly), []).append(param)
    result = []
    for (part, layer, decayed, scaled, brief), params in sorted(
            groups.items(), key=lambda item: (item[0][0] != "backbone", item[0][1], not item[0][2], item[0][3],
                                              item[0][4])):
        mult = norm_bias_lr_mult if scaled else 1.0
        group = {"params": params,
                 "name": part + (f"_scale{layer:.4g}" if layer != 1.0 else "") + ("" if decayed else "_no_decay")
                 + ("_norm_bias" if scaled else "") + ("_brief" if brief else ""),
                 "lr": lr * (backbone_lr_mult if part == "backbone" else 1.0) * layer * mult,
                 "weight_decay": weight_decay / mult if decayed else 0.0}
        if brief:
            group["train_epochs"] = train_epochs
        result.append(group)
    return result


def build_optimizer(model: nn.Module, cfg: OptimConfig, spec: ModelSpec, deepspeed: bool = False
                    ) -> torch.optim.Optimizer:
    """`deepspeed`: the optimizer DeepSpeed will wrap gets the foreach update. ZeRO-1/2 step it on
    their own flattened fp32 partitions, and there the fused one did not reproduce DDP's training
    (losses 8e-4 apart after 25 steps, where foreach matches DDP to 1e-4)."""
    trainable = check_trainable(model, cfg)
    groups = param_groups(model.named_parameters(), cfg.lr, cfg.weight_decay, cfg.no_decay_bn_bias,
                          cfg.backbone_lr_mult, spec.is_head, norm_bias_names(model), cfg.norm_bias_lr_mult,
                          frozen_later(trainable, cfg.freeze_after_params), cfg.freeze_after_epochs,
                          layer_decay_scales(model, spec, cfg.layer_decay), spec.no_weight_decay(model))
    # fused: one kernel updates every parameter (CPU and CUDA); foreach: a few kernels per group.
    implementation = {"fused": True} if cfg.fused and not deepspeed else {"foreach": True}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               **implementation)
    if cfg.name == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, foreach=True)
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
        start = cfg.warmup_start_ratio
        return start + (1 - start) * (step + 1) / warmup
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
    """One factor per group: the schedule's, and 0 from its `train_epochs` on (optim.freeze_after_*).
    With SGD and AdamW an lr of 0 leaves a parameter exactly as it is, momentum and decay included."""
    total = steps_per_epoch * epochs

    def factor_of(group: dict) -> Callable[[int], float]:
        # At least one step: a fraction of an epoch shorter than a step still trains once, as asked.
        stop = max(1, round(group["train_epochs"] * steps_per_epoch)) if group.get("train_epochs") else None
        return lambda step: 0.0 if stop is not None and step >= stop else lr_factor(step, cfg, steps_per_epoch, total)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor_of(group) for group in optimizer.param_groups])
