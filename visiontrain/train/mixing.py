"""Mixup and CutMix on the training device, and the soft targets the loss then trains on.

Each image of a micro-batch is mixed with the image at the mirrored position of the same
micro-batch (i with n - 1 - i, as timm pairs them), by a weight lambda ~ Beta(alpha, alpha):
Mixup blends the two images, CutMix pastes a box of the partner covering 1 - lambda of the
image (lambda is then corrected to the box's true area). `augment.mix_mode`: one draw for the
whole micro-batch (`batch`, timm's default: plain scalars, nothing to copy to the device) or one
per image (`elem`). Targets are the one-hot labels with label smoothing folded in (timm's
convention: 1 - s + s / C on the label, s / C elsewhere), mixed by the same lambda.

"The same batch", for the draws: one micro-batch of one process. The draws are a pure function of
(run.seed, epoch, micro-batch index in the epoch, rank), so a resumed run mixes exactly as the
uninterrupted one did; another process count or accumulation changes which images meet, as it
changes the micro-batches themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from visiontrain.config import AugmentConfig
from visiontrain.infra.errors import UsageError

SALT_MIX = 9  # apart from the per-image draws' salts (data/draws.py)


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def soft_target_losses(logits: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-sample losses against soft targets: softmax cross-entropy, or binary cross-entropy per class averaged
    over the classes (timm's BinaryCrossEntropy with mean reduction, per sample)."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1)


@dataclass(frozen=True)
class MixDraws:
    """What one micro-batch drew: per image, the weight of its own image and, for CutMix, the pasted box."""

    lam: np.ndarray  # (n,) weight of the image's own pixels and label (after CutMix's area correction)
    cutmix: np.ndarray  # (n,) bool
    boxes: np.ndarray  # (n, 4) top, bottom, left, right of the pasted box (empty when not CutMix)


class BatchMixer:
    """`mixer(images, labels, epoch, micro) -> (images, soft targets)`; labels stay for accuracy statistics."""

    def __init__(self, a: AugmentConfig, num_classes: int, smoothing: float, seed: int, rank: int,
                 micro_batch: int):
        if micro_batch < 2:
            raise UsageError(f"augment.mixup_alpha / augment.cutmix_alpha mix the images of a micro-batch, which "
                             f"holds {micro_batch}: raise train.batch_size or lower train.grad_accum_steps")
        self.cfg, self.num_classes, self.smoothing, self.seed, self.rank = a, num_classes, smoothing, seed, rank

    def draws(self, epoch: int, micro: int, n: int, height: int, width: int) -> MixDraws:
        a = self.cfg
        rng = np.random.default_rng((self.seed & 0xFFFFFFFFFFFFFFFF, SALT_MIX, epoch, micro, self.rank))
        count = n if a.mix_mode == "elem" else 1
        mixed = rng.random(count) < a.mix_prob
        if a.mixup_alpha > 0 and a.cutmix_alpha > 0:
            cutmix = rng.random(count) < a.switch_prob
        else:
            cutmix = np.full(count, a.cutmix_alpha > 0)
        lam = np.where(cutmix, rng.beta(max(a.cutmix_alpha, 1e-12), max(a.cutmix_alpha, 1e-12), count),
                       rng.beta(max(a.mixup_alpha, 1e-12), max(a.mixup_alpha, 1e-12), count))
        lam = np.where(mixed, lam, 1.0)
        cutmix &= mixed
        boxes = np.zeros((count, 4), dtype=np.int64)
        centres = rng.random((count, 2))
        for i in np.flatnonzero(cutmix):
            cut = np.sqrt(1.0 - lam[i])
            cut_h, cut_w = int(height * cut), int(width * cut)
            cy, cx = int(centres[i, 0] * height), int(centres[i, 1] * width)
            top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
            left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
            boxes[i] = top, bottom, left, right
            lam[i] = 1.0 - (bottom - top) * (right - left) / (height * width)
        if count == 1:
            lam, cutmix, boxes = np.repeat(lam, n), np.repeat(cutmix, n), np.repeat(boxes, n, axis=0)
        return MixDraws(lam, cutmix, boxes)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, micro: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, height, width = images.shape
        d = self.draws(epoch, micro, n, height, width)
        partner = images.flip(0)
        if self.cfg.mix_mode == "batch":  # scalars and slices: nothing to copy to the device
            lam = float(d.lam[0])
            if d.cutmix[0]:
                top, bottom, left, right = (int(v) for v in d.boxes[0])
                mixed = images.clone()
                mixed[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
            else:
                mixed = images * lam + partner * (1.0 - lam) if lam < 1.0 else images
            weights = torch.full((n, 1), lam, device=images.device)
        else:
            lam_t = torch.from_numpy(d.lam.astype(np.float32))
            boxes_t = torch.from_numpy(d.boxes)
            cut_t = torch.from_numpy(d.cutmix)
            if images.is_cuda:
                lam_t, boxes_t, cut_t = (t.pin_memory() for t in (lam_t, boxes_t, cut_t))
            lam_t, boxes_t, cut_t = (t.to(images.device, non_blocking=True) for t in (lam_t, boxes_t, cut_t))
            ys = torch.arange(height, device=images.device).view(1, height, 1)
            xs = torch.arange(width, device=images.device).view(1, 1, width)
            inside = ((ys >= boxes_t[:, 0, None, None]) & (ys < boxes_t[:, 1, None, None])
                      & (xs >= boxes_t[:, 2, None, None]) & (xs < boxes_t[:, 3, None, None]))
            own = torch.where(cut_t[:, None, None], (~inside).to(images.dtype),
                              lam_t[:, None, None].to(images.dtype)).unsqueeze(1)
            mixed = images * own + partner * (1 - own)
            weights = lam_t.view(n, 1)
        targets = smoothed_one_hot(labels, self.num_classes, self.smoothing)
        return mixed, weights * targets + (1 - weights) * targets.flip(0)


class SmoothedTargets:
    """No mixing, soft targets (train.loss=bce): the smoothed one-hot labels."""

    def __init__(self, num_classes: int, smoothing: float):
        self.num_classes, self.smoothing = num_classes, smoothing

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, micro: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return images, smoothed_one_hot(labels, self.num_classes, self.smoothing)


def targets_for(cfg, rank: int, micro_batch: int) -> BatchMixer | SmoothedTargets | None:
    """What turns a micro-batch's labels into the loss's targets: the mixer, smoothed one-hot targets for
    BCE, or None (integer labels, cross-entropy with label smoothing)."""
    classes, smoothing = cfg.model.num_classes, cfg.train.label_smoothing
    if cfg.augment.mixes:
        return BatchMixer(cfg.augment, classes, smoothing, cfg.run.seed, rank, micro_batch)
    return SmoothedTargets(classes, smoothing) if cfg.train.loss == "bce" else None
