"""Adversarial training: each training micro-batch replaced by its attack before the step.

    pixels      = images * std + mean                        (the loader's normalized batch, back to [0, 1])
    adversarial = pgd(loss of the model, pixels, eps, alpha, steps, start)   (attacks.py; n_fgsm: noisy_fgsm)
    the step then trains on normalize(adversarial), as on any batch (train/step.py)

Choices, as the references make them:
- BatchNorm stays in training mode during the attack (Wong et al.'s and Madry et al.'s training loops),
  so the attack's forward passes update the running statistics too. The attack runs on the plain
  module, not the DDP wrapper: it needs no gradient all-reduce, and the wrapper's next forward
  broadcasts rank 0's BatchNorm buffers as for any step.
- The attack's loss is the step's loss without label smoothing: cross-entropy on the labels, or the
  soft-target loss on Mixup / CutMix targets.
- Mixed precision: the attack runs under the step's autocast (bf16 or fp16, loss in fp32). It follows
  the sign of the input gradient, which low precision changes only for components near zero, whose
  step matters least; fp16 scales the loss by a constant first so the gradient does not underflow
  (the sign is unchanged by scaling).
- The random start draws from a generator seeded by (run.seed, epoch, micro-batch, rank), as Mixup
  does: a resumed run attacks exactly as the uninterrupted one did.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from visiontrain.config import AdversarialConfig
from visiontrain.robust.attacks import FP16_LOSS_SCALE, PixelSpace, noisy_fgsm, pgd
from visiontrain.robust.evaluation import SALT_TRAIN, generator_for
from visiontrain.train.mixing import soft_target_losses


class AdversarialBatches:
    """`adversary(images, labels, epoch, micro, targets) -> images`: the attacked micro-batch, normalized."""

    def __init__(self, cfg: AdversarialConfig, model: nn.Module, mean: list[float], std: list[float],
                 device: torch.device, seed: int, rank: int, autocast=contextlib.nullcontext, fp16: bool = False,
                 loss: str = "ce"):
        self.model, self.device, self.seed, self.rank = model, device, seed, rank
        self.space = PixelSpace(mean, std, device)
        self.eps, self.alpha, self.steps = cfg.eps, cfg.step_size, cfg.attack_steps
        self.random_start = cfg.method == "fgsm_rs" or cfg.random_start
        self.noise = cfg.noise_width if cfg.method == "n_fgsm" else None
        self.autocast, self.loss = autocast, loss
        self.loss_scale = FP16_LOSS_SCALE if fp16 else 1.0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, micro: int,
                 targets: torch.Tensor | None = None) -> torch.Tensor:
        def loss_of(pixels: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                logits = self.model(self.space.to_inputs(pixels, images.dtype)).float()
            if targets is None:
                return F.cross_entropy(logits, labels, reduction="none")
            return soft_target_losses(logits, targets, self.loss)

        generator = generator_for(self.device, self.seed, SALT_TRAIN, epoch, micro, self.rank)
        pixels = self.space.to_pixels(images)
        if self.noise is not None:
            adversarial = noisy_fgsm(loss_of, pixels, self.noise, self.alpha, generator, self.loss_scale)
        else:
            adversarial = pgd(loss_of, pixels, self.eps, self.alpha, self.steps, self.random_start, generator,
                              self.loss_scale)
        return self.space.to_inputs(adversarial, images.dtype)
