"""Which samples each rank reads, and in which order.

Training: torch's DistributedSampler (a seeded permutation per epoch, drop_last so
that no sample is seen twice in an epoch), able to start mid-epoch on resume. Each
index travels with its epoch, which keys its augmentation draws (`draws.py`): a
resumed run replays exactly the batches an uninterrupted run would have seen,
whatever the number of workers.

Evaluation: rank r reads positions r, r+W, r+2W, ... of the dataset, padded to the
same length on every rank (collectives inside the model, as in ZeRO-3, need equal
batch counts); padded positions are flagged invalid and never counted.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

from torch.utils.data import DistributedSampler, Sampler


def _pool(samples: int | Sequence[int]) -> Sequence[int]:
    """Dataset indices to draw from: 0..N-1, or a subset (`data.classes`, `data.train_fraction`)."""
    return range(samples) if isinstance(samples, int) else list(samples)


class ResumableDistributedSampler(DistributedSampler):
    """Yields (index, epoch) pairs (the epoch keys the sample's augmentation);
    `set_epoch(epoch, start=k)` skips the first k samples.

    `samples` is the dataset size, or the dataset indices to draw from.
    """

    def __init__(self, samples: int | Sequence[int], num_replicas: int, rank: int, seed: int):
        self.pool = _pool(samples)
        super().__init__(self.pool, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def epoch_indices(self) -> list[int]:
        """Every index this rank reads in the current epoch, from the start of the epoch."""
        return [self.pool[position] for position in super().__iter__()]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # The epoch travels with each index: persistent DataLoader workers never see set_epoch.
        for index in self.epoch_indices()[self.start:]:
            yield index, self.epoch

    def __len__(self) -> int:
        return self.num_samples - self.start


def eval_shard(samples: int | Sequence[int], world_size: int, rank: int) -> tuple[list[int], list[bool]]:
    """(indices, valid) for this rank: every rank gets ceil(N/W) positions, the excess invalid."""
    pool = _pool(samples)
    per_rank = math.ceil(len(pool) / world_size)
    positions = [rank + k * world_size for k in range(per_rank)]
    return [pool[p % len(pool)] for p in positions], [p < len(pool) for p in positions]


class EvalShardSampler(Sampler):
    """Yields (index, valid) pairs of `eval_shard`."""

    def __init__(self, samples: int | Sequence[int], world_size: int, rank: int):
        self.indices, self.valid = eval_shard(samples, world_size, rank)

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        return iter(zip(self.indices, self.valid))

    def __len__(self) -> int:
        return len(self.indices)

