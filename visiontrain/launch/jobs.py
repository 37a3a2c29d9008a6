"""What a submitit task runs: `visiontrain.train.run.train`, resumable across requeues.

Each task is one rank (one task per GPU). submitit's environment becomes the torch
rendezvous (RANK, WORLD_SIZE, MASTER_ADDR on the job's first node, ...). On SIGUSR1
(SLURM's warning before the time limit, or `scancel --signal=USR1 JOBID`) the trainer's
own handler makes every rank stop at the same step boundary and write a checkpoint
(`Preempted`, naming the signal); only then is the signal handed to submitit's handler,
which calls `checkpoint()` and requeues the job. A run stopped by SIGTERM (scancel) is
not requeued. The requeued job runs the same TrainJob in the same run directory, which
resumes from that checkpoint.
"""

from __future__ import annotations

import signal

import submitit

from visiontrain.infra.errors import (
    PeerFailed,
    Preempted,
    TrainingFailed,
    UsageError,
    describe_os_error,
    report_error,
)


class TrainFailed(RuntimeError):
    pass


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, config: str | None, overrides: list[str]):
        self.config, self.overrides = config, list(overrides)

    def describe(self) -> str:
        return " ".join((["-c", self.config] if self.config else []) + self.overrides)

    def __call__(self) -> str:
        from visiontrain.train.run import train

        dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                         overwrite=True)
        submitit_handler = signal.getsignal(signal.SIGUSR1)  # replaced by the trainer's while it runs
        try:
            train(self.config, self.overrides)
        except Preempted as stop:
            report_error(stop)
            # Every rank stopped at the same step and the checkpoint is on disk. Rank 0 decides:
            # on SIGUSR1 it hands the signal to submitit, which calls checkpoint() and requeues
            # (then exits). The other ranks end quietly: a failing task could make srun kill
            # rank 0 before it requeued.
            if dist_env.rank != 0:
                return "preempted"
            if stop.signal == "SIGUSR1" and callable(submitit_handler):
                submitit_handler(signal.SIGUSR1, None)
                return "preempted"
            raise TrainFailed(f"training {self.describe()} stopped on {stop.signal or 'a signal'} with a checkpoint: "
                              "submit it again to resume") from None
        except (UsageError, TrainingFailed, PeerFailed) as err:
            report_error(err)
            raise TrainFailed(f"training {self.describe()} failed (exit code {err.exit_code}): {err}") from None
        except OSError as err:  # a full disk or a refused path: one line, as train.py prints it
            line = describe_os_error(err)
            if line is None:
                raise
            raise TrainFailed(f"training {self.describe()} failed: {line}") from None
        return "done"

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """The run directory holds the training state: the same job, restarted, resumes it."""
        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.overrides))
