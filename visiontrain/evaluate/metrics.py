"""Accuracy counting on the device, and its reduction across ranks.

Counts stay on the device as running sums (no host sync per batch) and are summed
over ranks once, when read. Evaluation weights every sample by its `valid` flag, so
padding added to give ranks equal batch counts is never counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from visiontrain.evaluate.tta import tta_logits
from visiontrain.parallel.runtime import all_gather_objects


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
        # One top-5 and one reduction for all four sums: this runs every training step,
        # where each extra small kernel is host time on a short step.
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
        w = torch.ones_like(loss_per_sample) if weight is None else weight.to(loss_per_sample.dtype)
        columns = torch.stack([loss_per_sample * w, hits[:, 0] * w, hits.any(dim=1) * w, w], dim=1)
        self.sums += columns.sum(dim=0, dtype=torch.float64)

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
             prepare_inputs=lambda images: images, tta: str = "none") -> dict[str, float]:
    """Loss (plain cross-entropy), top-1 and top-5 over the whole eval set, all ranks together.
    `tta`: a mode of `tta.py` (the logits are averaged over its views)."""
    was_training = model.training
    model.eval()
    stats = RunningStats(device)
    for images, labels, valid in loader:
        with autocast():
            logits = tta_logits(lambda view: model(prepare_inputs(view)), images, tta)
        stats.update(F.cross_entropy(logits, labels, reduction="none"), logits, labels, valid)
    model.train(was_training)
    return stats.reduce(world_size)


@dataclass
class Predictions:
    """Per-sample results of one evaluation pass, rows in dataset-index order."""

    indices: torch.Tensor  # int64 [N]
    labels: torch.Tensor  # int64 [N]
    logits: torch.Tensor  # float32 [N, C]


@torch.no_grad()
def collect_predictions(model: torch.nn.Module, loader, autocast, world_size: int,
                        prepare_inputs=lambda images: images,
                        tta: str = "none") -> Predictions:
    """Logits of every eval sample, gathered from all ranks (every rank gets the whole set).

    `tta`: a mode of `tta.py` (the logits are averaged over its views).
    Logits stay on the device until the pass ends (no sync per batch).
    """
    was_training = model.training
    model.eval()
    logits_parts, label_parts, valid_parts = [], [], []
    for images, labels, valid in loader:
        with autocast():
            logits = tta_logits(lambda view: model(prepare_inputs(view)), images, tta)
        logits_parts.append(logits)
        label_parts.append(labels)
        valid_parts.append(valid)
    model.train(was_training)
    valid = torch.cat(valid_parts).cpu()
    local = Predictions(torch.tensor(loader.sample_indices[: len(valid)], dtype=torch.long)[valid],
                        torch.cat(label_parts).cpu()[valid], torch.cat(logits_parts).cpu()[valid])
    parts = all_gather_objects(local, world_size)
    indices = torch.cat([p.indices for p in parts])
    order = torch.argsort(indices)
    return Predictions(indices[order], torch.cat([p.labels for p in parts])[order],
                       torch.cat([p.logits for p in parts])[order])


def gather_sums(stats: dict[str, RunningStats], world_size: int) -> dict[str, torch.Tensor]:
    """Every rank's running sums, one row per rank (a collective): a resumed rank continues from its own."""
    rows = all_gather_objects([s.sums.cpu() for s in stats.values()], world_size)
    return {name: torch.stack([row[i] for row in rows]) for i, name in enumerate(stats)}


def restore_sums(stats: dict[str, RunningStats], saved: dict[str, torch.Tensor], rank: int, world_size: int) -> None:
    """Undo `gather_sums`. At another process count only the totals matter: rank 0 carries them."""
    for name, target in stats.items():
        rows = saved[name]
        if rows.shape[0] == world_size:
            target.sums.copy_(rows[rank])
        else:
            target.sums.copy_(rows.sum(0) if rank == 0 else torch.zeros_like(rows[0]))
