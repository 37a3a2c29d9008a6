"""Which evaluation was the best so far, and whether to stop early.

`train.monitor` (top1, top5 or loss) decides the best checkpoint; an improvement must
exceed `train.early_stop_min_delta`. With `train.early_stop_patience` > 0 the run stops
after that many evaluations without one. The state is part of every checkpoint, so a
resumed run keeps counting where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from visiontrain.config import TrainConfig


@dataclass
class BestState:
    best_value: float | None = None  # of train.monitor, at the best evaluation
    best_top1: float = -1.0  # val top-1 at the best evaluation
    best_epoch: int = 0
    evals_since_best: int = 0


class BestTracker:
    def __init__(self, train: TrainConfig):
        self.monitor, self.min_delta, self.patience = train.monitor, train.early_stop_min_delta, \
            train.early_stop_patience
        self.state = BestState()

    def update(self, val: dict[str, Any], epoch: int) -> bool:
        """Record one evaluation; True if it improved `monitor` by more than the minimum delta."""
        value, best = val[self.monitor], self.state.best_value
        if self.monitor == "loss":
            improved = best is None or value < best - self.min_delta
        else:
            improved = best is None or value > best + self.min_delta
        if improved:
            self.state = BestState(best_value=value, best_top1=val["top1"], best_epoch=epoch)
        else:
            self.state.evals_since_best += 1
        return improved

    def should_stop(self) -> bool:
        return bool(self.patience) and self.state.evals_since_best >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = BestState(**{key: state[key] for key in asdict(self.state)})
