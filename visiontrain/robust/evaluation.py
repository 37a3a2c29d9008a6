"""Clean and robust top-1 over an evaluation loader, all ranks together.

An image counts as robust when the model still classifies it correctly after every attack of the
evaluation: each PGD restart, or APGD with the cross-entropy and then the DLR loss (the two untargeted
attacks that decide most of AutoAttack's standard result; its targeted and black-box parts are not
run, so this is an upper bound of AutoAttack accuracy). Evaluation runs with BatchNorm in eval mode
(the references' choice) and draws its random starts from generators seeded by (seed, batch, restart,
rank): the same model, data and seed give the same number.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from visiontrain.robust.attacks import FP16_LOSS_SCALE, PixelSpace, apgd, losses_for, pgd

ATTACKS = ("pgd", "apgd")
SALT_EVAL = 21
SALT_TRAIN = 22


def generator_for(device: torch.device, *key: int) -> torch.Generator:
    """A generator on `device` whose seed is a hash of `key` (run seed, salt, epoch, batch, ...)."""
    seed = int(np.random.SeedSequence([k & 0xFFFFFFFFFFFFFFFF for k in key]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(seed & 0x7FFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class AttackSpec:
    name: str  # pgd | apgd
    eps: float
    steps: int
    alpha: float = 0.0  # pgd; 0: 2.5 x eps / steps
    restarts: int = 1
    seed: int = 0

    @property
    def step_size(self) -> float:
        return self.alpha or 2.5 * self.eps / max(self.steps, 1)

    def describe(self) -> dict:
        out = {"attack": self.name, "epsilon": self.eps, "steps": self.steps, "restarts": self.restarts,
               "seed": self.seed}
        if self.name == "pgd":
            out["alpha"] = self.step_size
        else:
            out["losses"] = ["ce", "dlr"]
        return out


def still_correct(model, space: PixelSpace, pixels: torch.Tensor, labels: torch.Tensor, autocast,
                  dtype: torch.dtype) -> torch.Tensor:
    with torch.no_grad(), autocast():
        return model(space.to_inputs(pixels, dtype)).argmax(1) == labels


def robust_correct(model, space: PixelSpace, images: torch.Tensor, labels: torch.Tensor, spec: AttackSpec,
                   generator_of, autocast=contextlib.nullcontext, fp16: bool = False) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """Per image: (clean correct, correct under every attack of `spec`). `generator_of(restart)`."""
    pixels = space.to_pixels(images)
    clean = still_correct(model, space, pixels, labels, autocast, images.dtype)
    robust = clean.clone()
    scale = FP16_LOSS_SCALE if fp16 else 1.0
    runs = [("ce", r) for r in range(spec.restarts)]
    if spec.name == "apgd":
        runs = [(loss, r) for loss in ("ce", "dlr") for r in range(spec.restarts)]
    for loss, restart in runs:
        alive = robust.nonzero().squeeze(1)  # images no attack has broken yet: the others stay broken
        if alive.numel() == 0:
            break
        x, y = pixels[alive], labels[alive]
        loss_of = losses_for(model, space, y, loss, autocast, images.dtype)
        generator = generator_of(restart + (1000 if loss == "dlr" else 0))
        if spec.name == "pgd":
            adversarial = pgd(loss_of, x, spec.eps, spec.step_size, spec.steps, True, generator, scale)
        else:
            adversarial = apgd(loss_of, x, spec.eps, spec.steps, generator, scale)
        robust[alive] = still_correct(model, space, adversarial, y, autocast, images.dtype)
    return clean, robust


def robust_accuracy(model: torch.nn.Module, loader, space: PixelSpace, spec: AttackSpec, device: torch.device,
                    world_size: int, rank: int = 0, autocast=contextlib.nullcontext, fp16: bool = False,
                    every: int = 1) -> dict:
    """Clean and robust top-1 (%) over the loader's (valid) images, or every `every`-th of them in the
    loader's order (datasets are stored by class: a stride keeps the classes' shares)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # clean, robust, count
    start = time.perf_counter()
    position = 0
    for batch, (images, labels, valid) in enumerate(loader):
        chosen = valid & ((torch.arange(len(valid), device=valid.device) + position) % every == 0)
        position += len(valid)
        rows = chosen.nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        clean, robust = robust_correct(model, space, images[rows], labels[rows], spec,
                                       lambda restart, b=batch: generator_for(device, spec.seed, SALT_EVAL, b,
                                                                              restart, rank),
                                       autocast, fp16)
        sums += torch.stack([clean.sum(), robust.sum(), torch.tensor(rows.numel(), device=device)]).double()
    model.train(was_training)
    if world_size > 1:
        torch.distributed.all_reduce(sums)
    clean, robust, count = sums.tolist()
    seconds = time.perf_counter() - start
    if count == 0:
        return {"clean_top1": float("nan"), "robust_top1": float("nan"), "samples": 0, "seconds": seconds}
    return {"clean_top1": 100 * clean / count, "robust_top1": 100 * robust / count, "samples": int(count),
            "seconds": seconds}
