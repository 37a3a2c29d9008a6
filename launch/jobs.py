"""What a submitit task runs: train.py's main, resumable across requeues.

Each task is one rank (one task per GPU). submitit's environment becomes the torch
rendezvous (RANK, WORLD_SIZE, MASTER_ADDR on the job's first node, ...). On SIGUSR1
(SLURM's warning before the time limit, or `scancel --signal=USR1 JOBID`) the trainer's
own handler makes every rank stop at the same step boundary and write a checkpoint
(exit code 3); only then is the signal handed to submitit's handler, which calls
`checkpoint()` and requeues the job. A run stopped by SIGTERM (scancel) is not requeued. The requeued job runs the same TrainJob in the
same run directory, which resumes from that checkpoint.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import submitit

ROOT = Path(__file__).resolve().parents[1]
PREEMPTED = 3  # train.py's exit code after a signal-triggered checkpoint


class TrainFailed(RuntimeError):
    pass


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, config: str | None, overrides: list[str]):
        self.config, self.overrides = config, list(overrides)

    def argv(self) -> list[str]:
        return (["-c", self.config] if self.config else []) + self.overrides

    def __call__(self) -> str:
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                         overwrite=True)
        submitit_handler = signal.getsignal(signal.SIGUSR1)  # replaced by the trainer's while it runs
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from train import main as train_main  # train.py beside this package

        from visiontrain.errors import run_cli

        code = run_cli(train_main, self.argv())
        if code == PREEMPTED:
            # Every rank stopped at the same step and the checkpoint is on disk. Rank 0 decides:
            # on SIGUSR1 it hands the signal to submitit, which calls checkpoint() and requeues
            # (then exits). The other ranks end quietly: a failing task could make srun kill
            # rank 0 before it requeued.
            if dist_env.rank != 0:
                return "preempted"
            if self.stopped_by() == "SIGUSR1" and callable(submitit_handler):
                submitit_handler(signal.SIGUSR1, None)
                return "preempted"
        if code != 0:
            raise TrainFailed(f"train.py {' '.join(self.argv())} exited with code {code}"
                              + (" (stopped with a checkpoint: submit it again to resume)" if code == PREEMPTED else ""))
        return "done"

    def stopped_by(self) -> str | None:
        """The signal that stopped the run, from its metrics.jsonl (SIGTERM, e.g. scancel: no requeue)."""
        from visiontrain.config import load_config

        metrics = Path(load_config(self.config, self.overrides).run.dir) / "metrics.jsonl"
        stops = [json.loads(line) for line in metrics.read_text().splitlines() if '"preempted"' in line]
        return stops[-1].get("signal") if stops else None

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """The run directory holds the training state: the same job, restarted, resumes it."""
        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.overrides))
