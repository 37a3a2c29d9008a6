"""Accuracy counting on the device, and its reduction across ranks.

Counts stay on the device as running sums (no host sync per batch) and are summed
over ranks once, when read. Evaluation weights every sample by its `valid` flag, so
padding added to give ranks equal batch counts is never counted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-sample 1.0/0.0: is the label among the k highest logits?"""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float()


class RunningStats:
    """Sums of loss, top-1 and top-5 hits and sample count, kept on the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)

    def update(self, loss_per_sample: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
               weight: torch.Tensor | None = None) -> None:
        w = torch.ones_like(loss_per_sample) if weight is None else weight.to(loss_per_sample.dtype)
        batch = torch.stack([
            (loss_per_sample * w).sum(),
            (topk_correct(logits, labels, 1) * w).sum(),
            (topk_correct(logits, labels, 5) * w).sum(),
            w.sum(),
        ])
        self.sums += batch.to(torch.float64)

    def reset(self) -> None:
        self.sums.zero_()

    def reduce(self, world_size: int) -> dict[str, float]:
        """Sum over ranks and read to the host (a sync): loss mean, top1/top5 in percent, count."""
        sums = self.sums.clone()
        if world_size > 1:
            torch.distributed.all_reduce(sums)
        loss, top1, top5, count = sums.tolist()
        if count == 0:
            return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "samples": 0}
        return {"loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count, "samples": int(count)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, autocast, device: torch.device, world_size: int,
             prepare_inputs=lambda images: images) -> dict[str, float]:
    """Loss (plain cross-entropy), top-1 and top-5 over the whole eval set, all ranks together."""
    was_training = model.training
    model.eval()
    stats = RunningStats(device)
    for images, labels, valid in loader:
        with autocast():
            logits = model(prepare_inputs(images))
        logits = logits.float()
        stats.update(F.cross_entropy(logits, labels, reduction="none"), logits, labels, valid)
    model.train(was_training)
    return stats.reduce(world_size)
