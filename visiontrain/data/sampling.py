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

import torch
from torch.utils.data import DistributedSampler, Sampler


def _pool(samples: int | Sequence[int]) -> Sequence[int]:
    """Dataset indices to draw from: 0..N-1, or a subset (`data.classes`, `data.train_fraction`)."""
    return range(samples) if isinstance(samples, int) else list(samples)


def copy_key(index: int, copy: int, dataset_size: int) -> int:
    """The index a repeated copy's augmentation draws are keyed by (copy 0: the sample's own index). The FFCV
    loader reads copy c of sample i as metadata row i + c N of the .beton's rows repeated (`ffcv_loader`)."""
    return index + copy * dataset_size


class ResumableDistributedSampler(DistributedSampler):
    """Yields (index, epoch, copy) triples (the epoch and copy key the sample's augmentation);
    `set_epoch(epoch, start=k)` skips the first k samples.

    `samples` is the dataset size, or the dataset indices to draw from. `repeats` > 1: repeated
    augmentation as DeiT and timm's RepeatAugSampler lay it out: the epoch's permutation with each
    sample repeated `repeats` times in a row, dealt to the ranks in turn (the copies of a sample land
    on consecutive ranks, or in one batch on one process), each rank keeping its usual count, so an
    epoch keeps its length and sees 1/repeats of the distinct samples.
    """

    def __init__(self, samples: int | Sequence[int], num_replicas: int, rank: int, seed: int, repeats: int = 1):
        self.pool = _pool(samples)
        super().__init__(self.pool, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start, self.repeats = 0, repeats

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def epoch_items(self) -> list[tuple[int, int]]:
        """(index, copy) of every sample this rank reads in the current epoch, from its start."""
        if self.repeats == 1:
            return [(self.pool[position], 0) for position in super().__iter__()]
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)  # DistributedSampler's permutation of the epoch
        order = torch.randperm(len(self.pool), generator=generator).tolist()
        repeated = [(self.pool[position], copy) for position in order for copy in range(self.repeats)]
        return repeated[self.rank::self.num_replicas][:self.num_samples]

    def epoch_indices(self) -> list[int]:
        """Every index this rank reads in the current epoch, from the start of the epoch."""
        return [index for index, _ in self.epoch_items()]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        # The epoch travels with each index: persistent DataLoader workers never see set_epoch.
        for index, copy in self.epoch_items()[self.start:]:
            yield index, self.epoch, copy

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

