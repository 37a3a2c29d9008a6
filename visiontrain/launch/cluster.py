"""submitit executors for train.py jobs, and following their states until they end.

Clusters: `slurm` (sbatch through submitit), `local` (processes on this machine, one per
task, no scheduler), `debug` (one task, in this process: for a debugger). States on
SLURM are read with `scontrol` (finished jobs stay visible for MinJobAge, 5 minutes by
default), which works without SLURM's accounting database; elsewhere from submitit.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import submitit

from visiontrain.infra.errors import UsageError

CLUSTERS = ("slurm", "local", "debug")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@dataclass
class Resources:
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # default: one per GPU, else 1
    cpus_per_task: int | None = None
    time_min: int = 60
    partition: str | None = None
    account: str | None = None
    signal_delay_s: int = 180  # SIGUSR1 this long before the time limit

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)


def check_resources(cluster: str, res: Resources) -> None:
    if cluster not in CLUSTERS:
        raise UsageError(f"--cluster {cluster!r} is not one of {', '.join(CLUSTERS)}")
    tasks = res.tasks if res.tasks_per_node is None else res.tasks_per_node  # 0 must not mean "default"
    for flag, value, low in (("--nodes", res.nodes, 1), ("--gpus-per-node", res.gpus_per_node, 0),
                             ("--tasks-per-node", tasks, 1), ("--time", res.time_min, 1)):
        if value < low:
            raise UsageError(f"{flag} {value} is invalid: at least {low}")
    if res.gpus_per_node and res.tasks != res.gpus_per_node:
        raise UsageError(f"--tasks-per-node {res.tasks} with --gpus-per-node {res.gpus_per_node}: "
                         "train.py runs one task per GPU")
    if cluster == "slurm":
        if shutil.which("sbatch") is None:
            raise UsageError("--cluster slurm needs sbatch on PATH (this machine has none); use --cluster local")
        return
    if res.nodes != 1:
        raise UsageError(f"--nodes {res.nodes} needs --cluster slurm: the {cluster} cluster is this machine")
    if cluster == "debug" and res.tasks != 1:
        raise UsageError(f"--cluster debug runs one task in this process, not {res.tasks}; use --cluster local")
    if res.gpus_per_node:
        import torch

        have = torch.cuda.device_count()
        if res.gpus_per_node > have:
            raise UsageError(f"--gpus-per-node {res.gpus_per_node} asks for more GPUs than this machine has ({have})")


def make_executor(cluster: str, folder: Path, res: Resources, name: str, after: str | None = None):
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = {"name": name, "nodes": res.nodes, "tasks_per_node": res.tasks, "timeout_min": res.time_min}
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.cpus_per_task:
        params["cpus_per_task"] = res.cpus_per_task
    if cluster == "slurm":
        params["slurm_signal_delay_s"] = res.signal_delay_s
        if res.partition:
            params["slurm_partition"] = res.partition
        if res.account:
            params["slurm_account"] = res.account
        if after:
            # afterok: start only once the job `after` succeeded; a failed one cancels this job.
            params["slurm_additional_parameters"] = {"dependency": f"afterok:{after}", "kill_on_invalid_dep": "yes"}
    executor.update_parameters(**params)
    return executor


def _scontrol_state(job_id: str) -> str | None:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    for token in out.split():
        if token.startswith("JobState="):
            return token.split("=", 1)[1]
    return None


def state(cluster: str, job) -> str:
    if cluster == "slurm":
        found = _scontrol_state(str(job.job_id))
        if found:
            return found
    if job.done():
        return "FAILED" if job.exception() is not None else "COMPLETED"
    return "RUNNING" if cluster != "slurm" else str(job.state)


@dataclass
class Tracked:
    role: str  # pretrain, finetune, a sweep point's label, ...
    job: object  # submitit Job
    run_dir: str


def follow(cluster: str, tracked: list[Tracked], poll_s: float = 2.0,
           say: Callable[[str], None] = print) -> dict[str, str]:
    """Poll until every job ended; print a status table whenever a state changes. Returns role -> state."""
    last: dict[str, str] = {}
    width = max(len(t.role) for t in tracked)
    while True:
        now = {t.role: state(cluster, t.job) for t in tracked}
        if now != last:
            say(time.strftime("%H:%M:%S"))
            for t in tracked:
                say(f"  {t.role:{width}s}  job {t.job.job_id:>8}  {now[t.role]:10s}  {t.run_dir}")
            last = now
        if all(s in ENDED for s in now.values()):
            return now
        time.sleep(poll_s)
