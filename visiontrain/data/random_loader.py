"""data.loader=random: random tensors made on the device, the data pipeline taken out of throughput runs.

A small pool of normalized, channels-last batches is generated once; iteration cycles
through it. The learnable generated *image* dataset is a different thing: it is
written to disk by `python -m visiontrain prep synthetic` and read by the other loaders.
"""

from __future__ import annotations

import torch

from visiontrain.config import Config
from visiontrain.data.base import DataBundle
from visiontrain.data.subset import is_subset
from visiontrain.infra.errors import UsageError
from visiontrain.parallel.batch_plan import BatchPlan
from visiontrain.parallel.runtime import Runtime

_POOL = 4  # distinct batches; more only costs device memory


def random_batches(
    count: int, batch: int, image_size: int, num_classes: int, device: torch.device, channels_last: bool, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    pool = []
    for _ in range(min(count, _POOL)):
        images = torch.randn(batch, 3, image_size, image_size, generator=gen)
        labels = torch.randint(num_classes, (batch,), generator=gen)
        pool.append((images.to(device).contiguous(memory_format=fmt), labels.to(device)))
    return pool


class RandomTrainLoader:
    """Random device tensors; `set_epoch`/`start` only decide how many batches remain."""

    def __init__(self, pool, plan: BatchPlan, steps_per_epoch: int):
        self.pool, self.micro_batch, self.steps_per_epoch = pool, plan.micro_batch, steps_per_epoch
        self.batches_per_epoch = steps_per_epoch * plan.accum_steps
        self._remaining = self.batches_per_epoch

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self._remaining = self.batches_per_epoch - start

    def epoch_indices(self) -> list[int]:
        return []

    def __iter__(self):
        for i in range(self._remaining):
            yield self.pool[i % len(self.pool)]


class RandomEvalLoader:
    def __init__(self, pool, num_batches: int, rank: int):
        self.pool, self.num_batches = pool, num_batches
        self.num_samples = num_batches * pool[0][0].shape[0]
        self.sample_indices = list(range(rank * self.num_samples, (rank + 1) * self.num_samples))

    def __iter__(self):
        for i in range(self.num_batches):
            images, labels = self.pool[i % len(self.pool)]
            yield images, labels, torch.ones_like(labels, dtype=torch.bool)


def build_random_data(cfg: Config, runtime: Runtime, plan: BatchPlan) -> DataBundle:
    d = cfg.data
    if is_subset(d):
        raise UsageError("data.classes and data.train_fraction select from a dataset's labels; "
                         "data.loader=random has none (use `visiontrain prep synthetic` for a generated dataset)")
    steps = plan.steps_per_epoch(d.random_train_samples)
    args = (plan.micro_batch, d.image_size, cfg.model.num_classes, runtime.device, cfg.model.channels_last)
    train_pool = random_batches(steps * plan.accum_steps, *args, seed=cfg.run.seed)
    val_batches = max(1, d.random_val_samples // (plan.micro_batch * runtime.world_size))
    val_pool = random_batches(val_batches, *args, seed=cfg.run.seed + 1)
    names = [f"class_{i}" for i in range(cfg.model.num_classes)]
    return DataBundle(RandomTrainLoader(train_pool, plan, steps),
                      RandomEvalLoader(val_pool, val_batches, runtime.rank), cfg.model.num_classes, names,
                      d.random_train_samples)
