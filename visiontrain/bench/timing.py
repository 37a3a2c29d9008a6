"""Wall time of a piece of work on a device: the device is synchronized before and after, so queued
kernels count where they run, not where they were launched. And the CPU time of child processes."""

from __future__ import annotations

import resource
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported where a device is synchronized: `bench --help` starts without it
    import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Callable[[], object]) -> float:
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children (their own children included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
