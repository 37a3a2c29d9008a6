"""This process at run time: its device, its `Runtime` (rank, world, accelerator), and the collectives.

`init_runtime` joins the process group that the launcher set up (see `launchers`). On a
CPU-only machine the process group uses gloo; accelerate is told `cpu=True` explicitly,
otherwise N CPU processes can each believe they are alone.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta

import torch

from visiontrain.config import ParallelConfig
from visiontrain.infra.errors import PeerFailed, UsageError, describe_os_error
from visiontrain.parallel.launchers import LaunchInfo, detect_launch, export_torch_env
from visiontrain.parallel.network import choose_socket_interface, free_port
from visiontrain.parallel.threads import use_threads

DEVICES = ("auto", "cpu", "cuda")


def select_device(requested: str, local_rank: int = 0, option: str = "") -> torch.device:
    """The device for `requested` (auto | cpu | cuda): auto takes a GPU when one is visible; with several
    GPUs, the process of local rank `local_rank` takes GPU `local_rank` modulo their count.

    `option` is how the request was given, for errors: "" for the config key run.device, else a
    command-line option such as "--device".
    """
    if option:
        invalid, unavailable = f"{option} {requested!r}", f"{option} {requested}"
    else:
        invalid = unavailable = f"config key 'run.device' = {requested!r}"
    if requested not in DEVICES:
        raise UsageError(f"{invalid} is invalid: allowed {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    if requested == "cuda" and not cuda:
        raise UsageError(f"{unavailable} but no CUDA device is visible; use auto or cpu")
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
    host: str = field(default_factory=socket.gethostname)
    # Across nodes: this node's address toward the head node, and the interface gloo uses.
    node_address: str | None = None
    socket_interface: str | None = None

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
    use_threads(info.local_world_size)  # before any loader imports FFCV, which would set 1
    node_address, interface = choose_socket_interface(info) or (None, None)
    device = select_device(device_request, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=parallel.timeout) if parallel.timeout else None  # None: the backend's own
    if parallel.strategy == "deepspeed":
        runtime = _plain_runtime(info, device, timeout)
        runtime.node_address, runtime.socket_interface = node_address, interface
        return runtime
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if timeout is not None and info.world_size > 1 and not torch.distributed.is_initialized():
        # Joined here, with the timeout, rather than through accelerate's InitProcessGroupKwargs, which drops a
        # timeout equal to its own default for NCCL (600 s) and gloo would then wait its 1800 s. The
        # Accelerator adopts a group that exists.
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                             timeout=timeout)

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
        node_address=node_address,
        socket_interface=interface,
    )


def shutdown() -> None:
    """Leave the process group at the end of a run, also a failed one. Left to interpreter
    exit, gloo's threads can abort a rank after a run that succeeded ("terminate called
    without an active exception", exit code 134), and the job would count as failed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _plain_runtime(info: LaunchInfo, device: torch.device, timeout: timedelta | None) -> Runtime:
    backend = "nccl" if device.type == "cuda" else "gloo"
    if info.world_size == 1:
        # A world of one, as a launcher would describe it (DeepSpeed checks LOCAL_RANK).
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port()))):
            os.environ.setdefault(key, value)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, init_method="env://",
                                             **({"timeout": timeout} if timeout is not None else {}))
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


def _exit_code_of(error: BaseException) -> int:
    if isinstance(error, OSError):
        return 2 if describe_os_error(error) else 1  # a full disk or refused path is the user's to fix
    return int(getattr(error, "exit_code", 1))


def raise_if_any_rank_failed(error: BaseException | None, runtime: Runtime, what: str) -> None:
    """Where only some ranks act (rank 0 writes a checkpoint): one tiny all-reduce tells every rank whether any
    failed. The failed rank raises its own error, the others PeerFailed, so all end within seconds; without
    it they would wait in the next collective (NCCL until the process-group timeout, parallel.timeout)."""
    if runtime.world_size == 1:
        if error is not None:
            raise error
        return
    world = runtime.world_size  # one number per rank, exit code and rank together: the largest code wins
    failed = torch.tensor([-1 if error is None else _exit_code_of(error) * world + runtime.rank],
                          dtype=torch.int64, device=runtime.device)
    torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX)
    value = int(failed.item())  # waits for the all-reduce (NCCL only queues it) before this rank may leave
    if error is not None:
        raise error
    if value >= 0:
        code, rank = divmod(value, world)
        raise PeerFailed(f"rank {rank} failed while {what} (exit {code}); its own log says why", code)


def all_ranks_agree(ok: bool, world_size: int, device: torch.device) -> bool:
    """True on every rank if `ok` is true on every rank (one tiny all-reduce)."""
    if world_size == 1:
        return ok
    flag = torch.tensor([int(ok)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())
