"""`BatchPlan`: how the global batch (train.batch_size) splits over processes and accumulation steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from visiontrain.infra.errors import UsageError

if TYPE_CHECKING:  # annotations only: the plan needs no config machinery at run time
    from visiontrain.config import TrainConfig


@dataclass(frozen=True)
class BatchPlan:
    """How the global batch is split: the one place micro-batch and accumulation are decided.

    One optimizer step consumes `global_batch` images: `accum_steps` micro-batches of
    `micro_batch` images on each of `world_size` processes.
    """

    global_batch: int
    world_size: int
    accum_steps: int
    micro_batch: int

    @classmethod
    def for_world(cls, train: TrainConfig, world_size: int) -> BatchPlan:
        per_step = world_size * train.grad_accum_steps
        if train.batch_size % per_step:
            raise UsageError(
                f"config key 'train.batch_size' = {train.batch_size} is invalid: the global batch must be divisible "
                f"by world size x train.grad_accum_steps = {world_size} x {train.grad_accum_steps} = {per_step}"
            )
        return cls(train.batch_size, world_size, train.grad_accum_steps, train.batch_size // per_step)

    @classmethod
    def of_micro_batch(cls, micro_batch: int, world_size: int = 1) -> BatchPlan:
        """Batches of `micro_batch` per process and no accumulation (evaluation, loader benchmarks)."""
        return cls(micro_batch * world_size, world_size, 1, micro_batch)

    def steps_per_epoch(self, num_samples: int) -> int:
        """Optimizer steps in one epoch of `num_samples` (each rank drops its partial last step)."""
        steps = (num_samples // self.world_size) // self.micro_batch // self.accum_steps
        if steps == 0:
            raise UsageError(
                f"config key 'train.batch_size' is too large: {num_samples} training samples over {self.world_size} "
                f"process(es) do not fill one optimizer step of {self.global_batch} images"
            )
        return steps
