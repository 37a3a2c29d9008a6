"""L-infinity attacks in pixel space: FGSM with a random start, PGD, and APGD (CE and DLR losses).

Epsilon and step sizes are in units of [0, 1] pixels, as papers state them (8/255). The loaders hand
the model normalized images, so `PixelSpace` converts a batch back to pixels, the attack moves the
pixels inside the epsilon-ball and inside [0, 1], and the model reads them normalized again: the
normalization is folded into the attacked function, exactly as a wrapper `model(normalize(x))` would.

Every attack takes `loss_of(pixels) -> per-sample losses` (the model, its normalization and its loss
together; or `(losses, correct)`, whether each image is still classified right, as `losses_for` gives for
evaluation) and returns adversarial pixels, detached. Evaluating, an image counts as broken once any iterate
fooled the model (as AutoAttack keeps its first adversarial point): the highest-loss point need not be
misclassified. Gradients are taken with `torch.autograd.grad` with
respect to the perturbation only: no parameter gradient is accumulated, so an attack inside a training
step leaves the step's own backward untouched. Random starts draw from the `generator` given, so an
attack is a pure function of its inputs and that generator's seed.

- `pgd`: Madry et al. 2018; `steps=1, random_start=True, alpha=1.25 eps` is FGSM with a random start
  ("Fast is better than free", Wong, Rice and Kolter 2020).
- `noisy_fgsm`: N-FGSM (de Jorge et al. 2022, "Make Some Noise"): one signed-gradient step from a start drawn
  in a ball twice as wide, and no projection back into the epsilon-ball, which keeps single-step training
  from the catastrophic overfitting FGSM with a random start suffers at larger steps and longer schedules.
- `apgd`: Croce and Hein 2020 (AutoAttack's APGD): momentum 0.75, the step size halved at checkpoints
  where the loss stopped rising, restarting from the best point; losses `ce` or `dlr` (the
  difference-of-logits ratio, invariant to the logits' scale, which masks gradients of CE less often).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

import torch
import torch.nn.functional as F

LossOf = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]

# fp16 gradients of a loss of order 1 with respect to pixels underflow; the attacks follow the gradient's
# sign only, so the loss is scaled by this constant before differentiation (direction unchanged).
FP16_LOSS_SCALE = 2.0**12


def parse_pixels(text: str | float, name: str) -> float:
    """'8/255', '0.03' or 0.03 -> a float; ValueError naming `name` otherwise."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError, OverflowError):
        raise ValueError(f"{name}={text!r} is not a number or a fraction such as 8/255") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}={text!r} is not finite")
    return value


class PixelSpace:
    """Normalized model inputs <-> [0, 1] pixels, per channel."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() * self.std + self.mean).clamp_(0, 1)

    def to_inputs(self, pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return ((pixels - self.mean) / self.std).to(dtype)


def _project(pixels: torch.Tensor, adversarial: torch.Tensor, eps: float) -> torch.Tensor:
    """Into the eps-ball around `pixels` and into [0, 1]."""
    return torch.min(torch.max(adversarial, pixels - eps), pixels + eps).clamp_(0, 1)


def _gradient(loss_of: LossOf, adversarial: torch.Tensor,
              loss_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-sample losses at `adversarial`, their gradient with respect to it, and which images are still
    classified right (None when `loss_of` does not say)."""
    adversarial = adversarial.detach().requires_grad_(True)
    out = loss_of(adversarial)
    losses, correct = out if isinstance(out, tuple) else (out, None)
    grad, = torch.autograd.grad(losses.sum() * loss_scale, adversarial)
    # Only the sign is used: an fp16 overflow (inf) keeps its sign, a NaN makes no step.
    grad = torch.nan_to_num(grad, nan=0.0, posinf=1.0, neginf=-1.0)
    return losses.detach(), grad, correct


class _FirstFooling:
    """Per image, the first iterate the model misclassified (when `loss_of` reports correctness)."""

    def __init__(self, pixels: torch.Tensor):
        self.found = pixels.clone()
        self.fooled = torch.zeros(pixels.shape[0], dtype=torch.bool, device=pixels.device)

    def see(self, iterate: torch.Tensor, correct: torch.Tensor | None) -> None:
        if correct is None:
            return
        new = ~correct & ~self.fooled
        self.found[new] = iterate[new]
        self.fooled |= new

    def result(self, otherwise: torch.Tensor) -> torch.Tensor:
        return torch.where(self.fooled.view(-1, *[1] * (otherwise.dim() - 1)), self.found, otherwise)


def uniform_start(pixels: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    noise = torch.empty_like(pixels).uniform_(-eps, eps, generator=generator)
    return (pixels + noise).clamp_(0, 1)


def pgd(loss_of: LossOf, pixels: torch.Tensor, eps: float, alpha: float, steps: int, random_start: bool,
        generator: torch.Generator | None = None, loss_scale: float = 1.0) -> torch.Tensor:
    """`steps` signed-gradient ascent steps of size `alpha`, each projected back into the ball.
    `steps=0`: the start itself (the clean pixels, or the random start). Training attacks (a `loss_of` without
    correctness) return the last iterate; evaluation ones an image's first misclassified iterate, if any."""
    pixels = pixels.detach()
    adversarial = uniform_start(pixels, eps, generator) if random_start and eps > 0 else pixels.clone()
    first = _FirstFooling(pixels)
    for _ in range(steps):
        _, grad, correct = _gradient(loss_of, adversarial, loss_scale)
        first.see(adversarial, correct)
        adversarial = _project(pixels, adversarial + alpha * grad.sign(), eps)
    return first.result(adversarial).detach()


def noisy_fgsm(loss_of: LossOf, pixels: torch.Tensor, noise: float, alpha: float,
               generator: torch.Generator | None = None, loss_scale: float = 1.0) -> torch.Tensor:
    """N-FGSM: a uniform draw in the `noise`-ball (the paper's 2 x epsilon), then one signed-gradient step of
    `alpha` (epsilon), kept inside [0, 1] only: the perturbation may reach `noise + alpha`. A training attack."""
    pixels = pixels.detach()
    start = uniform_start(pixels, noise, generator)
    _, grad, _ = _gradient(loss_of, start, loss_scale)
    return (start + alpha * grad.sign()).clamp_(0, 1).detach()


def dlr_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Croce and Hein's difference-of-logits ratio: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)."""
    ordered, _ = logits.sort(dim=1, descending=True)
    true = logits.gather(1, labels[:, None]).squeeze(1)
    top_is_true = (logits.argmax(1) == labels).float()
    best_other = ordered[:, 0] * (1 - top_is_true) + ordered[:, 1] * top_is_true
    third = ordered[:, 2] if logits.shape[1] > 2 else ordered[:, -1]
    return -(true - best_other) / (ordered[:, 0] - third + 1e-12)


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations where APGD may halve its step size: the first after 22 % of the iterations, then
    intervals 3 % shorter each time, down to 6 % (the paper's p(j+1) = p(j) + max(p(j) - p(j-1) - 0.03,
    0.06), in whole iterations as AutoAttack counts them)."""
    interval, shrink, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    points, at = [], interval
    while at < steps:
        points.append(at)
        interval = max(interval - shrink, shortest)
        at += interval
    return points


def apgd(loss_of: LossOf, pixels: torch.Tensor, eps: float, steps: int,
         generator: torch.Generator | None = None, loss_scale: float = 1.0, rho: float = 0.75,
         momentum: float = 0.75) -> torch.Tensor:
    """Auto-PGD with a random start: returns, per image, the point of highest loss found."""
    pixels = pixels.detach()
    n = pixels.shape[0]
    per_image = (n,) + (1,) * (pixels.dim() - 1)
    start = torch.empty_like(pixels).uniform_(-1, 1, generator=generator)
    start = start / start.flatten(1).abs().amax(1).clamp_min(1e-12).view(per_image)
    current = _project(pixels, pixels + eps * start, eps)
    step = torch.full(per_image, 2.0 * eps, device=pixels.device)
    loss, grad, correct = _gradient(loss_of, current, loss_scale)
    first = _FirstFooling(pixels)
    first.see(current, correct)
    best, best_loss, best_grad = current.clone(), loss.clone(), grad.clone()
    previous = current.clone()
    checkpoints = apgd_checkpoints(steps)
    last_checkpoint, rises = 0, torch.zeros(n, device=pixels.device)
    step_at_checkpoint, best_loss_at_checkpoint = step.clone(), best_loss.clone()
    for k in range(steps):
        z = _project(pixels, current + step * grad.sign(), eps)
        if k == 0:
            following = z
        else:  # the momentum step of APGD's update
            following = _project(pixels, current + momentum * (z - current) + (1 - momentum) * (current - previous),
                                 eps)
        previous = current
        current = following
        new_loss, new_grad, correct = _gradient(loss_of, current, loss_scale)
        first.see(current, correct)
        rises += (new_loss > loss).float()
        improved = new_loss > best_loss
        best[improved] = current[improved]
        best_grad[improved] = new_grad[improved]
        best_loss = torch.where(improved, new_loss, best_loss)
        loss, grad = new_loss, new_grad
        if k + 1 in checkpoints:
            window = k + 1 - last_checkpoint
            too_few_rises = rises < rho * window
            stalled = (step.flatten() == step_at_checkpoint.flatten()) & (best_loss == best_loss_at_checkpoint)
            halve = too_few_rises | stalled
            step_at_checkpoint = step.clone()
            best_loss_at_checkpoint = best_loss.clone()
            step = torch.where(halve.view(per_image), step / 2, step)
            # The halved ones continue from their best point, with its gradient and no momentum.
            current = torch.where(halve.view(per_image), best, current)
            previous = torch.where(halve.view(per_image), best, previous)
            grad = torch.where(halve.view(per_image), best_grad, grad)
            loss = torch.where(halve, best_loss, loss)
            rises.zero_()
            last_checkpoint = k + 1
    return first.result(best).detach()


def losses_for(model: Callable[[torch.Tensor], torch.Tensor], space: PixelSpace, labels: torch.Tensor,
               loss: str = "ce", autocast=None, dtype: torch.dtype = torch.float32) -> LossOf:
    """The per-sample `loss` (ce | dlr) of `model` on pixels, through the normalization, in fp32, and whether
    each image is still classified right."""
    import contextlib

    autocast = autocast or contextlib.nullcontext

    def loss_of(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast():
            logits = model(space.to_inputs(pixels, dtype)).float()
        correct = (logits.argmax(1) == labels).detach()
        if loss == "dlr":
            return dlr_losses(logits, labels), correct
        return F.cross_entropy(logits, labels, reduction="none"), correct

    return loss_of
