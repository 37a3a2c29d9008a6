"""One training step as numerics, on one screen: what to read when a loss curve looks wrong.

    every micro-batch (accum_steps of them make one optimizer step):
        images = attack(images)                      with adversarial.method set (robust/training.py)
        logits = model(images)                       under autocast for bf16/fp16; the loss in fp32
        loss   = cross_entropy(logits, labels, label_smoothing).mean()
                 or, with Mixup / CutMix or train.loss=bce, the soft-target loss (train/mixing.py)
        backward(loss / accum_steps)                 x the GradScaler's scale for fp16
    the last micro-batch of the window (`sync`):
        unscale, clip the gradient norm to train.grad_clip_norm (when > 0)
        optimizer step (the GradScaler skips it on inf/nan gradients), update the scale, zero the gradients
        learning-rate schedule step, EMA update

Under DDP the gradients are all-reduced during the last micro-batch's backward only (`sync_context`).
DeepSpeed's engine does the accumulation scaling, fp16 loss scaling, clipping and stepping itself, from
the same settings (deepspeed_config.py); before each micro-batch it needs rank 0's BatchNorm statistics
(`before_micro_batch`). `reference_loop` is the same numerics as the plain PyTorch loop a user would write:
a test checks that fp32 DDP without accumulation ends bit-equal to it, and `bench overhead` times the
trainer against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ContextManager, Iterable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from visiontrain.train.mixing import soft_target_losses

if TYPE_CHECKING:
    from torch.optim.swa_utils import AveragedModel


class StepOutput(NamedTuple):
    loss: torch.Tensor  # the micro-batch's mean loss (what backward saw, before accumulation scaling)
    losses: torch.Tensor  # per sample
    logits: torch.Tensor
    stepped: bool  # the optimizer stepped (the last micro-batch of an accumulation window)


class Step:
    """`step(images, labels, sync)` -> StepOutput; `sync`: the last micro-batch of the optimizer step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, backend,
                 label_smoothing: float, ema_model: nn.Module, ema: AveragedModel | None, loss: str = "ce"):
        self.model, self.optimizer, self.scheduler, self.backend = model, optimizer, scheduler, backend
        self.label_smoothing, self.loss = label_smoothing, loss
        self.ema_model, self.ema = ema_model, ema  # the plain module EMA averages, and the average

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, sync: bool,
                 targets: torch.Tensor | None = None) -> StepOutput:
        """`targets`: soft targets (mixed and/or for BCE, label smoothing folded in), else `labels` are the
        targets of cross-entropy with label smoothing."""
        self.backend.before_micro_batch()
        with self.backend.sync_context(self.model, sync):
            with self.backend.autocast():
                logits = self.model(self.backend.prepare_inputs(images))
            if targets is None:
                losses = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing,
                                         reduction="none")
            else:
                losses = soft_target_losses(logits.float(), targets, self.loss)
            loss = losses.mean()
            self.backend.backward(loss)
        if not self.backend.step(self.optimizer, sync):
            return StepOutput(loss, losses, logits, False)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.ema_model)
        return StepOutput(loss, losses, logits, True)


# The gradient numerics of the DDP backend (DeepSpeed's engine has its own).
def scaled_backward(loss: torch.Tensor, accum_steps: int, scaler: torch.amp.GradScaler | None) -> None:
    """`loss`: the micro-batch mean. Divided by the window's length, the accumulated gradients are the
    gradient of the whole batch's mean; fp16 scales it up so small gradients do not underflow."""
    if accum_steps > 1:
        loss = loss / accum_steps
    if scaler is not None:
        loss = scaler.scale(loss)
    loss.backward()


def apply_gradients(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grad_clip_norm: float,
                    scaler: torch.amp.GradScaler | None) -> None:
    if grad_clip_norm > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(params, grad_clip_norm, foreach=True)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def reference_loop(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                   batches: Iterable[tuple[torch.Tensor, torch.Tensor]], autocast: Callable[[], ContextManager],
                   label_smoothing: float) -> None:
    """What a user would write by hand (one process, no accumulation, no clipping, no GradScaler)."""
    for images, labels in batches:
        with autocast():
            logits = model(images)
        # The per-sample form the trainer uses (it keeps per-sample losses for its statistics): the mean
        # reduction inside cross_entropy sums in another order, and the two would differ in the last bit.
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, reduction="none").mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
