"""Everything about ranks, world size, devices and launchers; the rest of the code asks here.

Supported launchers, all through one code path:
- `python train.py`                          one process
- `torchrun --nproc_per_node N train.py`     RANK / WORLD_SIZE / LOCAL_RANK set by torchrun
- `accelerate launch train.py`               the same variables (accelerate runs torchrun)
- `srun python train.py` (one task per GPU)  SLURM_* variables, translated here

On a CPU-only machine the process group uses gloo; accelerate is told `cpu=True`
explicitly, otherwise N CPU processes can each believe they are alone.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Mapping, MutableMapping

import torch

from visiontrain.config import ParallelConfig
from visiontrain.errors import UsageError


@dataclass(frozen=True)
class LaunchInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str  # single | torchrun | slurm


def _int(environ: Mapping[str, str], key: str, default: int) -> int:
    value = environ.get(key)
    return default if value in (None, "") else int(value)


def is_srun_task(environ: Mapping[str, str]) -> bool:
    """True inside a task started by srun (not the sbatch shell: it has no step task count)."""
    return "SLURM_PROCID" in environ and "SLURM_STEP_NUM_TASKS" in environ


def detect_launch(environ: Mapping[str, str] = os.environ) -> LaunchInfo:
    if "RANK" in environ and "WORLD_SIZE" in environ:
        world = _int(environ, "WORLD_SIZE", 1)
        return LaunchInfo(
            rank=_int(environ, "RANK", 0),
            world_size=world,
            local_rank=_int(environ, "LOCAL_RANK", 0),
            local_world_size=_int(environ, "LOCAL_WORLD_SIZE", world),
            launcher="torchrun",
        )
    if is_srun_task(environ):
        return LaunchInfo(
            rank=_int(environ, "SLURM_PROCID", 0),
            world_size=_int(environ, "SLURM_STEP_NUM_TASKS", 1),
            local_rank=_int(environ, "SLURM_LOCALID", 0),
            local_world_size=_int(environ, "SLURM_STEP_TASKS_PER_NODE", 1)
            if environ.get("SLURM_STEP_TASKS_PER_NODE", "").isdigit() else 1,
            launcher="slurm",
        )
    return LaunchInfo(rank=0, world_size=1, local_rank=0, local_world_size=1, launcher="single")


def slurm_head_node(environ: Mapping[str, str]) -> str:
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "")
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        ).stdout
        return out.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodelist.split(",")[0] or "127.0.0.1"


def export_torch_env(info: LaunchInfo, environ: MutableMapping[str, str] = os.environ) -> None:
    """Give srun tasks the variables torch.distributed's env:// rendezvous reads."""
    if info.launcher != "slurm":
        return
    environ.setdefault("RANK", str(info.rank))
    environ.setdefault("WORLD_SIZE", str(info.world_size))
    environ.setdefault("LOCAL_RANK", str(info.local_rank))
    environ.setdefault("LOCAL_WORLD_SIZE", str(info.local_world_size))
    environ.setdefault("MASTER_ADDR", slurm_head_node(environ))
    # A port derived from the job id: concurrent jobs sharing a node do not collide.
    environ.setdefault("MASTER_PORT", str(20000 + _int(environ, "SLURM_JOB_ID", 0) % 20000))


def select_device(requested: str, local_rank: int) -> torch.device:
    cuda = torch.cuda.is_available()
    if requested == "cuda" and not cuda:
        raise UsageError("config key 'run.device' = 'cuda' but no CUDA device is visible; use auto or cpu")
    if requested == "cpu" or not cuda:
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


@dataclass
class Runtime:
    """Who this process is and what it runs on; created once per process."""

    accelerator: object  # accelerate.Accelerator
    device: torch.device
    rank: int
    world_size: int
    local_rank: int
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def init_runtime(device_request: str, parallel: ParallelConfig | None = None) -> Runtime:
    """Join the process group (if any) and return this process's Runtime.

    DDP runs go through accelerate. DeepSpeed runs get a plain torch process group, also
    for one process (DeepSpeed requires one), and no Accelerator.
    """
    parallel = parallel or ParallelConfig()
    info = detect_launch()
    export_torch_env(info)
    device = select_device(device_request, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if parallel.strategy == "deepspeed":
        return _plain_runtime(info, device)
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # Precision is handled by the backend (torch.autocast + GradScaler), not accelerate:
    # accelerate's fp16 on CPU silently runs fp32.
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision="no",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=parallel.find_unused_parameters)],
    )
    if accelerator.num_processes != info.world_size:
        raise RuntimeError(
            f"launcher started {info.world_size} processes but the process group has "
            f"{accelerator.num_processes}; on CPU use `torchrun --nproc_per_node N train.py`"
        )
    return Runtime(
        accelerator=accelerator,
        device=device,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        local_rank=info.local_rank,
        launcher=info.launcher,
    )


def shutdown() -> None:
    """Leave the process group at the end of a run, also a failed one. Left to interpreter
    exit, gloo's threads can abort a rank after a run that succeeded ("terminate called
    without an active exception", exit code 134), and the job would count as failed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _plain_runtime(info: LaunchInfo, device: torch.device) -> Runtime:
    backend = "nccl" if device.type == "cuda" else "gloo"
    if info.world_size == 1:
        # A world of one, as a launcher would describe it (DeepSpeed checks LOCAL_RANK).
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port()))):
            os.environ.setdefault(key, value)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, init_method="env://")
    import deepspeed
    import deepspeed.ops

    if device.type == "cpu":
        # DeepSpeed's CPU backend otherwise compiles a shared-memory all-reduce with g++ on
        # first use (about a minute per fresh install). It serves inference all-reduces only;
        # training traffic goes through the torch.distributed (gloo) group above.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=backend)  # adopts the group above; its config reads the world size
    return Runtime(accelerator=None, device=device, rank=info.rank, world_size=info.world_size,
                   local_rank=info.local_rank, launcher=info.launcher)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def all_gather_objects(obj: object, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    gathered: list = [None] * world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def average_buffers(module: torch.nn.Module, world_size: int) -> None:
    """Make floating-point buffers (BatchNorm running statistics) identical on all ranks: their mean."""
    if world_size == 1:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            torch.distributed.all_reduce(buf)
            buf /= world_size


def all_ranks_agree(ok: bool, world_size: int, device: torch.device) -> bool:
    """True on every rank if `ok` is true on every rank (one tiny all-reduce)."""
    if world_size == 1:
        return ok
    flag = torch.tensor([int(ok)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())
