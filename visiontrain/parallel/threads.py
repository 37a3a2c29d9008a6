"""How many CPU threads torch's operators use in this process: decided once per process, kept through
every import and loader.

FFCV sets torch's thread count to 1 when it is imported and to its worker count in its loader's epoch
thread; a loader that restored "the count it saw" would restore 1 and a single-process CPU run would use
one core whatever the machine has. So the count is decided here, once (`use_threads`, called by
`init_runtime` and by the evaluate, predict and export commands), and whoever lets FFCV touch it
sets it back to `decided()`.

The count: the launcher's `OMP_NUM_THREADS` (torchrun sets 1 per process unless told otherwise), else
the cores this process may run on divided by the processes of this node.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch

from visiontrain.infra.errors import UsageError

_decided: int | None = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what a cgroup or taskset leaves this process
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_count(local_processes: int = 1, environ: Mapping[str, str] = os.environ) -> int:
    value = environ.get("OMP_NUM_THREADS", "").strip()
    if value:
        first = value.split(",")[0]  # OpenMP's nested form "4,2": the outer level is ours
        if not first.isdigit() or int(first) < 1:
            raise UsageError(f"OMP_NUM_THREADS={value!r} is invalid: a positive number of threads, e.g. 4")
        return int(first)
    return max(1, available_cores() // max(1, local_processes))


def use_threads(local_processes: int = 1, environ: Mapping[str, str] = os.environ) -> int:
    """Decide this process's thread count and apply it; returns it."""
    global _decided
    _decided = thread_count(local_processes, environ)
    torch.set_num_threads(_decided)
    return _decided


def decided() -> int:
    """The count `use_threads` decided (deciding it for one process if nothing has yet)."""
    return _decided if _decided is not None else use_threads()


def restore() -> None:
    """Set torch's thread count back to the decided one (after FFCV changed it)."""
    torch.set_num_threads(decided())
