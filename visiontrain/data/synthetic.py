"""Random tensors made on the device: the data pipeline taken out of throughput runs.

A small pool of normalized, channels-last batches is generated once; iteration cycles
through it. The learnable generated *image* dataset is a different thing: it is
written to disk by `python -m data_prep synthetic` and read by the other backends.
"""

from __future__ import annotations

import torch

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
