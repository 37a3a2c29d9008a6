"""Hyperparameter search: an Optuna study whose trials are visiontrain run directories.

    python -m visiontrain sweep run SPEC.yaml --study DIR [--workers K] [--storage URL] [--train-command CMD]
    python -m visiontrain sweep create SPEC.yaml --study DIR [--storage URL]
    python -m visiontrain sweep worker --study DIR [--worker-id ID] [--train-command CMD]
    python -m visiontrain sweep status DIR
    python -m visiontrain sweep summary DIR [--out DIR/summary]

`run` checks the spec (nothing starts on a bad one), creates the study directory (or checks that an existing
one holds the same search) and runs K workers on this machine until the trial budget is spent; run it
again to resume a stopped sweep. On a cluster, `create` does the same checks and creates the study without
running anything; then every job (e.g. each task of `sbatch --array`, slurm/sweep.sh) runs `worker`.
Each trial runs `--train-command` (default: python -m visiontrain train; e.g. "torchrun --nproc_per_node 4
train.py" or "srun python train.py" for several GPUs per trial) in STUDY/trials/NNNN. Exit codes: 0 done,
2 bad input, 3 stopped on a signal (a trial checkpointed; run again or requeue to resume it), 1 a worker
failed. docs/sweep.md explains storage, preemption and pruning.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from visiontrain.infra.errors import ArgumentParser, UsageError, run_cli
from visiontrain.sweep.spec import read_spec
from visiontrain.sweep.study import StudyDir
from visiontrain.sweep.worker import (
    HOST,
    PREEMPTED,
    Worker,
    counts,
    default_train_command,
    default_worker_id,
    progress_line,
)

log = logging.getLogger("visiontrain.sweep")


def _train_command(text: str | None) -> list[str]:
    if text is None:
        return default_train_command()
    command = shlex.split(text)
    if not command:
        raise UsageError("--train-command is empty: give a command such as 'torchrun --nproc_per_node 2 train.py'")
    return command


def _setup_logging(log_file: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=handlers, force=True)


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m visiontrain sweep", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="create or resume a study and run workers on this machine")
    run.add_argument("spec", type=Path, help="the sweep spec (YAML; docs/sweep.md)")
    run.add_argument("--study", type=Path, required=True, help="the study directory (created, or resumed)")
    run.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    run.add_argument("--storage", help="an SQLAlchemy database URL instead of the journal file in --study")
    run.add_argument("--train-command", help="how a trial trains (default: python -m visiontrain train)")
    create = sub.add_parser("create", help="check the spec and create the study (or check an existing one)")
    create.add_argument("spec", type=Path)
    create.add_argument("--study", type=Path, required=True)
    create.add_argument("--storage")
    worker = sub.add_parser("worker", help="one worker: run trials until the budget is spent (a cluster job)")
    worker.add_argument("--study", type=Path, required=True)
    worker.add_argument("--worker-id", help="default: SLURM's JOBID_TASK (array), its job id, else host-pid")
    worker.add_argument("--train-command")
    status = sub.add_parser("status", help="trials complete / pruned / failed / running")
    status.add_argument("study", type=Path)
    summary = sub.add_parser("summary", help="best trial, its config, a table of all trials, plots")
    summary.add_argument("study", type=Path)
    summary.add_argument("--out", type=Path, help="default: STUDY/summary")
    args = parser.parse_args(argv)

    if args.command == "run":
        return run_local(args)
    if args.command == "create":
        spec = read_spec(args.spec)
        study = StudyDir(args.study)
        study.create_or_check(spec, args.storage)
        print(f"study {study.path}: {progress_line(study.open(spec), spec)}; run its workers with "
              f"python -m visiontrain sweep worker --study {study.path} (sbatch --array=0-N slurm/sweep.sh "
              f"{study.path})")
        return 0
    if args.command == "worker":
        study = StudyDir(args.study)
        spec = study.spec()
        command = _train_command(args.train_command)
        worker_id = args.worker_id or default_worker_id()
        _setup_logging(study.workers / f"{worker_id}.log")
        return Worker(study, worker_id, command, spec).run()
    if args.command == "status":
        from visiontrain.sweep.summary import status_text

        print(status_text(StudyDir(args.study)))
        return 0
    from visiontrain.sweep.summary import write_summary

    _setup_logging()
    print(write_summary(StudyDir(args.study), args.out))
    return 0


def run_local(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: give 1 or more")
    _train_command(args.train_command)  # checked before anything starts
    spec = read_spec(args.spec)
    study = StudyDir(args.study)
    study.create_or_check(spec, args.storage)
    _setup_logging()
    log.info("study %s: %s", study.path, progress_line(study.open(spec), spec))
    base = [sys.executable, "-m", "visiontrain", "sweep", "worker", "--study", str(study.path)]
    if args.train_command:
        base += ["--train-command", args.train_command]
    # Ids stable across reruns on this machine (a rerun resumes its trials) and distinct between machines.
    workers = [subprocess.Popen([*base, "--worker-id", f"{HOST}-{i}"]) for i in range(args.workers)]

    def forward(signum, _frame):
        for process in workers:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        while any(process.poll() is None for process in workers):
            time.sleep(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [process.returncode for process in workers]
    opened = study.open(spec)
    log.info("study %s: %s (worker exit codes %s)", study.path, progress_line(opened, spec), codes)
    if any(code == PREEMPTED for code in codes):
        return PREEMPTED
    if any(code != 0 for code in codes):
        return 1
    running = counts(opened)["running"]
    if running:  # owned by workers elsewhere, or by one of an earlier run with more --workers
        log.info("%d trial(s) still RUNNING under other workers: run again (or start their workers) to finish "
                 "them; python -m visiontrain sweep status %s", running, study.path)
        return PREEMPTED
    log.info("python -m visiontrain sweep summary %s: the best trial, its config and plots", study.path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
