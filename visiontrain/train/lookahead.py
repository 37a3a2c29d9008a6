"""Lookahead with a scheduled average (train.lookahead_*): every K optimizer steps the model's weights and
BatchNorm statistics move to a running average of themselves, and training ends on that average.

    every K steps:  average = decay_t * average + (1 - decay_t) * weights;   weights = average
    decay_t = lookahead_decay * (step / total_steps) ** lookahead_power
    at the end:     weights = average

Early in training decay_t is near 0 (the average follows the weights); late, it smooths the last
noisy steps of a short schedule, where an EMA kept beside the model would lag behind it
(airbench's CIFAR-10 recipes use K = 5, decay 0.95 ** 5, power 3). Unlike train.ema the
average *is* the model: it is what the next steps start from, what is evaluated and exported.
The average is part of every checkpoint, so a resumed run continues it exactly. A run stopped
early (train.early_stop_patience) ends on its best checkpoint, not on a final average; train.ema,
if also on, averages the weights as each optimizer step leaves them, before the lookahead move.
"""

from __future__ import annotations

import torch
from torch import nn


class Lookahead:
    def __init__(self, model: nn.Module, every_steps: int, decay: float, power: float, total_steps: int):
        self.every, self.decay, self.power, self.total = every_steps, decay, power, total_steps
        # Views on the model's floating-point parameters and buffers, taken once (loading a checkpoint and
        # training update them in place); BN's num_batches_tracked counts, it is not averaged.
        self.current = {name: value for name, value in model.state_dict().items() if value.is_floating_point()}
        self.average = {name: value.detach().clone() for name, value in self.current.items()}
        self.moved = False  # a run shorter than one interval ends on its own weights, not on the start

    def decay_at(self, step: int) -> float:
        return self.decay * (step / self.total) ** self.power

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """`step`: optimizer steps completed (1-based)."""
        if step % self.every == 0:
            self._move(1.0 - self.decay_at(step))
            self.moved = True

    @torch.no_grad()
    def finish(self) -> None:
        """The end of training: the weights become the average (the last < K steps are not folded in)."""
        if self.moved:
            self._move(0.0)

    def _move(self, weight_of_current: float) -> None:
        for name, average in self.average.items():
            average.lerp_(self.current[name], weight_of_current)
            self.current[name].copy_(average)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{name: value.cpu() for name, value in self.average.items()},
                "_moved": torch.tensor(self.moved)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, average in self.average.items():
            average.copy_(state[name])
        self.moved = bool(state["_moved"])
