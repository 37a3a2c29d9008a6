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

import logging
import os
import re
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Mapping, MutableMapping

import torch

from visiontrain.config import ParallelConfig
from visiontrain.infra.errors import UsageError

log = logging.getLogger(__name__)


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
            local_world_size=tasks_on_node(environ.get("SLURM_STEP_TASKS_PER_NODE", "1"),
                                           _int(environ, "SLURM_NODEID", 0)),
            launcher="slurm",
        )
    return LaunchInfo(rank=0, world_size=1, local_rank=0, local_world_size=1, launcher="single")


def tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """Tasks on node `node_id` of a SLURM step, from SLURM's compressed list: "2(x3),1" is 2, 2, 2, 1."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise UsageError(f"cannot read SLURM's tasks per node SLURM_STEP_TASKS_PER_NODE={tasks_per_node!r}: "
                             "expected a list like 2(x3),1")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if not 0 <= node_id < len(counts):
        raise UsageError(f"SLURM_NODEID={node_id} is outside SLURM_STEP_TASKS_PER_NODE={tasks_per_node!r}")
    return counts[node_id]


def slurm_head_node(environ: Mapping[str, str]) -> str:
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "")
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        ).stdout
        return out.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodelist.split(",")[0] or "127.0.0.1"


def slurm_node_address(node: str) -> str:
    """How SLURM itself reaches `node` (its NodeAddr): an address or a name that resolves across the cluster.
    The node name alone can resolve to a loopback address on the node itself (a common /etc/hosts line),
    which would make every other node connect to itself."""
    try:
        out = subprocess.run(["scontrol", "show", "node", node], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        log.warning("rendezvous on the head node's name %s: `scontrol show node` failed (%s)", node, err)
        return node
    match = re.search(r"\bNodeAddr=(\S+)", out)
    if not match:
        log.warning("rendezvous on the head node's name %s: `scontrol show node` gave no NodeAddr", node)
    return match.group(1) if match else node


def export_torch_env(info: LaunchInfo, environ: MutableMapping[str, str] = os.environ) -> None:
    """Give srun tasks the variables torch.distributed's env:// rendezvous reads."""
    if info.launcher != "slurm":
        return
    environ.setdefault("RANK", str(info.rank))
    environ.setdefault("WORLD_SIZE", str(info.world_size))
    environ.setdefault("LOCAL_RANK", str(info.local_rank))
    environ.setdefault("LOCAL_WORLD_SIZE", str(info.local_world_size))
    if "MASTER_ADDR" not in environ:
        environ["MASTER_ADDR"] = slurm_node_address(slurm_head_node(environ))
    # A port derived from the job id: concurrent jobs sharing a node do not collide.
    environ.setdefault("MASTER_PORT", str(20000 + _int(environ, "SLURM_JOB_ID", 0) % 20000))


def spans_nodes(info: LaunchInfo) -> bool:
    return info.world_size > info.local_world_size


def route_to(host: str) -> tuple[str, str]:
    """(local address, interface name) this machine uses to reach `host` (no packet is sent)."""
    try:
        address = socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except socket.gaierror as err:
        raise UsageError(f"the rendezvous address MASTER_ADDR={host!r} does not resolve on {socket.gethostname()} "
                         f"({err.strerror}): set MASTER_ADDR to the head node's address") from None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))
            local = probe.getsockname()[0]
    except OSError as err:
        raise UsageError(f"no route from {socket.gethostname()} to the rendezvous address MASTER_ADDR={host!r} "
                         f"({address}: {err.strerror}): set MASTER_ADDR to an address of the head node this node "
                         "reaches") from None
    interface = interface_of(local)
    if not interface:
        raise UsageError(f"cannot tell which network interface carries {local} (the route to MASTER_ADDR={host!r}): "
                         "set GLOO_SOCKET_IFNAME")
    return local, interface


def interface_of(address: str) -> str:
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == address for a in addresses):
            return name
    return ""


def outward_interface() -> tuple[str, str]:
    """(address, interface) other machines reach this one through: the default route's interface,
    else the only interface that is up besides loopback."""
    import psutil

    try:
        with open("/proc/net/route") as table:
            default = [line.split()[0] for line in table.readlines()[1:] if line.split()[1] == "00000000"]
    except OSError:
        default = []
    stats = psutil.net_if_stats()
    up = [name for name, st in stats.items() if st.isup and name != "lo" and ipv4_of(name)]
    candidates = [name for name in default if name in up] or up
    if len(set(candidates)) != 1:
        raise UsageError("this node runs the rendezvous but cannot tell which network interface the other nodes "
                         f"reach it through (up: {', '.join(up) or 'none'}): set GLOO_SOCKET_IFNAME (and "
                         "NCCL_SOCKET_IFNAME) to it")
    return ipv4_of(candidates[0]), candidates[0]


def ipv4_of(interface: str) -> str:
    import psutil

    return next((a.address for a in psutil.net_if_addrs().get(interface, []) if a.family == socket.AF_INET), "")


def choose_socket_interface(info: LaunchInfo,
                            environ: MutableMapping[str, str] = os.environ) -> tuple[str, str | None] | None:
    """For a world that spans nodes, point gloo at the interface that reaches the other nodes.

    Left alone, gloo binds to whatever this host's name resolves to, often 127.0.1.1 (Debian's and
    Ubuntu's /etc/hosts), and ranks on other nodes then wait for a connection that never comes. On
    a node that reaches the head node over the network, that is the interface of the route to it;
    on the head node itself (MASTER_ADDR may resolve to loopback there), the interface that carries
    the default route, or the only one that is up. An interface given in GLOO_SOCKET_IFNAME is kept.
    Returns (this node's address, interface), None within one node."""
    if not spans_nodes(info) or "MASTER_ADDR" not in environ:
        return None
    if environ.get("GLOO_SOCKET_IFNAME"):
        return ipv4_of(environ["GLOO_SOCKET_IFNAME"].split(",")[0]) or None, environ["GLOO_SOCKET_IFNAME"]
    local, interface = route_to(environ["MASTER_ADDR"])
    if local.startswith("127."):
        local, interface = outward_interface()
    environ["GLOO_SOCKET_IFNAME"] = interface
    return local, interface


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
    node_address, interface = choose_socket_interface(info) or (None, None)
    device = select_device(device_request, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if parallel.strategy == "deepspeed":
        runtime = _plain_runtime(info, device)
        runtime.node_address, runtime.socket_interface = node_address, interface
        return runtime
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
        node_address=node_address,
        socket_interface=interface,
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
