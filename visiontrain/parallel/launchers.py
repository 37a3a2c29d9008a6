"""Which launcher started this process, and this process's rank, world size and local rank.

Supported launchers, all through one code path:
- `python train.py`                          one process
- `torchrun --nproc_per_node N train.py`     RANK / WORLD_SIZE / LOCAL_RANK set by torchrun
- `accelerate launch train.py`               the same variables (accelerate runs torchrun)
- `srun python train.py` (one task per GPU)  SLURM_* variables, translated here (`export_torch_env`)
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Mapping, MutableMapping

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
