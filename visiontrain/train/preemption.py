"""Stop cleanly on request: SIGUSR1 (SLURM's warning before a time limit or preemption,
`scancel --signal=USR1 JOBID`) or SIGTERM (a scheduler or a user stopping the job).

The signal handler only sets a flag. The trainer asks `stop_now()` after each optimizer
step: with one process the flag is read directly; with several, ranks agree every
`every_steps` steps through one tiny all-reduce (a host sync every N steps, not every
step), so all ranks stop after the same step, write one checkpoint and exit with code 3.
The batch script (slurm/) requeues on that code; the requeued job resumes exactly.
"""

from __future__ import annotations

import logging
import signal

import torch

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionWatch:
    def __init__(self, world_size: int, device: torch.device, every_steps: int):
        self.world_size, self.device, self.every_steps = world_size, device, every_steps
        self.requested = False
        self.signal_name = ""

    def install(self) -> PreemptionWatch:
        # Kept until the process ends: a second signal after the stop (SLURM may send several) must not
        # reach another handler (submitit's would requeue from every rank).
        for sig in SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def stop_now(self, step: int, boundary: bool = False) -> bool:
        """True on every rank at once when any rank was signalled. `boundary`: check regardless of step."""
        if self.world_size == 1:
            return self.requested
        if not boundary and step % self.every_steps:
            return False
        flag = torch.tensor([int(self.requested)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
