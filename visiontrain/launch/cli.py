"""Submit train.py jobs with submitit: one job, a pretrain -> fine-tune pipeline, or a sweep.

    python -m visiontrain launch submit -c CONFIG [key=value ...] [--sweep key=a,b ...]
                            [--nodes N] [--gpus-per-node G] [--cluster slurm|local|debug]
                            [--partition P] [--account A] [--time MIN] [--no-wait]
    python -m visiontrain launch pipeline --pretrain CONFIG --finetune CONFIG [key=value ...]
                              [pretrain:key=value ...] [finetune:key=value ...] [resources] [--no-wait]

Overrides without a prefix apply to every job; `pretrain:`/`finetune:` ones to one of
the two. The fine-tuning job starts from the pretraining run directory
(finetune.init_from), on SLURM with --dependency=afterok: a failed pretraining cancels
it. A sweep runs one job per combination (a SLURM job array), each in
RUN_DIR/<values>, and prints a results table. Jobs are preemption-safe: SIGUSR1 (sent
--signal-delay seconds before the time limit, or by `scancel --signal=USR1 JOBID`) makes
them checkpoint at a step boundary, requeue and resume. Exit codes: 0 every job
completed, 1 a job failed or was cancelled, 2 bad input (nothing submitted).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from visiontrain.infra.errors import UsageError, run_cli
from visiontrain.infra.fileio import write_json

PREFIXES = ("pretrain:", "finetune:")


def _resources_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default="slurm", help="slurm (default) | local | debug")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=0, help="one task per GPU (default 0: CPU)")
    parser.add_argument("--tasks-per-node", type=int, help="processes per node without GPUs (default 1)")
    parser.add_argument("--cpus-per-task", type=int)
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--time", type=int, default=60, help="time limit in minutes (default 60)")
    parser.add_argument("--signal-delay", type=int, default=180,
                        help="SIGUSR1 this many seconds before the time limit (default 180)")
    parser.add_argument("--no-wait", dest="wait", action="store_false", help="print the job ids and return")
    parser.add_argument("--poll", type=float, default=5.0, help=argparse.SUPPRESS)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m visiontrain launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    submit = sub.add_parser("submit", help="one training job (or a sweep of them)")
    submit.add_argument("-c", "--config", help="YAML config (train.py's defaults otherwise)")
    submit.add_argument("overrides", nargs="*", metavar="section.key=value")
    submit.add_argument("--sweep", nargs="+", default=[], metavar="section.key=v1,v2",
                        help="one job per combination of these values")
    _resources_args(submit)
    pipeline = sub.add_parser("pipeline", help="pretraining, then fine-tuning from its weights")
    pipeline.add_argument("--pretrain", required=True, metavar="CONFIG")
    pipeline.add_argument("--finetune", required=True, metavar="CONFIG")
    pipeline.add_argument("overrides", nargs="*", metavar="[pretrain:|finetune:]section.key=value")
    _resources_args(pipeline)
    # Overrides may stand before and after the options (argparse keeps only the first run of them).
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides += extra
    return args


def _resources(args):
    from visiontrain.launch.cluster import Resources, check_resources

    res = Resources(nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node,
                    cpus_per_task=args.cpus_per_task, time_min=args.time, partition=args.partition,
                    account=args.account, signal_delay_s=args.signal_delay)
    check_resources(args.cluster, res)
    return res


def _run_dir(config: str | None, overrides: list[str], nproc: int) -> str:
    """The job's run directory, after checking its config as train.py will (exit 2 here, not on a node)."""
    from visiontrain.config import load_config
    from visiontrain.parallel.batch_plan import BatchPlan

    if config is not None and not Path(config).is_file():
        raise UsageError(f"config file {config!r} does not exist")
    cfg = load_config(config, overrides)
    BatchPlan.for_world(cfg.train, nproc)
    return str(Path(cfg.run.dir).resolve())


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", label).replace("=", "-")


def submit(args) -> int:
    from visiontrain.bench.sweep import expand
    from visiontrain.launch.cluster import Tracked, follow, make_executor
    from visiontrain.launch.jobs import TrainJob

    res = _resources(args)
    nproc = res.nodes * res.tasks
    points = expand(args.overrides, args.sweep)
    base = _run_dir(args.config, args.overrides, nproc)
    jobs, run_dirs = [], []
    for point in points:
        overrides = list(point.overrides)
        if args.sweep:
            overrides.append(f"run.dir={base}/{_slug(point.label)}")
        run_dirs.append(_run_dir(args.config, overrides, nproc))
        jobs.append(TrainJob(args.config, overrides))
    executor = make_executor(args.cluster, Path(base) / "submitit", res, Path(base).name)
    with executor.batch():  # a SLURM job array for a sweep
        submitted = [executor.submit(job) for job in jobs]
    tracked = [Tracked(point.label if args.sweep else "train", job, run_dir)
               for point, job, run_dir in zip(points, submitted, run_dirs)]
    for t in tracked:
        print(f"submitted {t.role}: job {t.job.job_id}, run dir {t.run_dir}", flush=True)
    if not args.wait:
        return 0
    states = follow(args.cluster, tracked, args.poll)
    if args.sweep:
        print(sweep_table(tracked, states))
        write_json(Path(base) / "sweep.json", sweep_rows(tracked, states))
    return _verdict(states)


def pipeline(args) -> int:
    from visiontrain.launch.cluster import Tracked, follow, make_executor, state
    from visiontrain.launch.jobs import TrainJob

    res = _resources(args)
    nproc = res.nodes * res.tasks
    shared = [o for o in args.overrides if not o.startswith(PREFIXES)]
    own = {p: [o[len(p):] for o in args.overrides if o.startswith(p)] for p in PREFIXES}
    pre_overrides = shared + own["pretrain:"]
    pre_dir = _run_dir(args.pretrain, pre_overrides, nproc)
    fine_overrides = shared + own["finetune:"] + [f"finetune.init_from={pre_dir}"]
    fine_dir = _run_dir(args.finetune, fine_overrides, nproc)
    if fine_dir == pre_dir:
        raise UsageError(f"pretraining and fine-tuning would share run.dir={pre_dir}; give them different ones")
    if args.cluster != "slurm" and not args.wait:
        raise UsageError(f"--no-wait needs --cluster slurm: on {args.cluster} this command itself chains the jobs")

    pre_job = make_executor(args.cluster, Path(pre_dir) / "submitit", res, "pretrain").submit(
        TrainJob(args.pretrain, pre_overrides))
    print(f"submitted pretrain: job {pre_job.job_id}, run dir {pre_dir}", flush=True)
    tracked = [Tracked("pretrain", pre_job, pre_dir)]
    if args.cluster != "slurm":  # no scheduler to hold the second job: wait here
        states = follow(args.cluster, tracked, args.poll)
        if states["pretrain"] != "COMPLETED":
            print(f"pretraining {states['pretrain'].lower()}: fine-tuning not started", file=sys.stderr)
            return 1
    fine_job = make_executor(args.cluster, Path(fine_dir) / "submitit", res, "finetune",
                             after=str(pre_job.job_id) if args.cluster == "slurm" else None).submit(
        TrainJob(args.finetune, fine_overrides))
    print(f"submitted finetune: job {fine_job.job_id} (after pretrain), run dir {fine_dir}", flush=True)
    tracked.append(Tracked("finetune", fine_job, fine_dir))
    if not args.wait:
        return 0
    states = follow(args.cluster, tracked, args.poll)
    states.setdefault("pretrain", state(args.cluster, pre_job))
    if states["pretrain"] != "COMPLETED" and states["finetune"] == "CANCELLED":
        print(f"pretraining {states['pretrain'].lower()} (job {pre_job.job_id}): SLURM cancelled the fine-tuning "
              f"(job {fine_job.job_id}); see {pre_dir}/submitit", file=sys.stderr)
    return _verdict(states)


def _verdict(states: dict[str, str]) -> int:
    bad = {role: s for role, s in states.items() if s != "COMPLETED"}
    for role, s in bad.items():
        print(f"{role}: {s}", file=sys.stderr)
    return 1 if bad else 0


def sweep_rows(tracked, states) -> list[dict]:
    rows = []
    for t in tracked:
        summary_path = Path(t.run_dir) / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        final = summary.get("final") or {}
        rows.append({"point": t.role, "job": str(t.job.job_id), "state": states[t.role], "run_dir": t.run_dir,
                     "final_top1": final.get("top1"), "best_top1": summary.get("best_top1"),
                     "best_epoch": summary.get("best_epoch"), "train_time_s": summary.get("train_time_s")})
    return rows


def sweep_table(tracked, states) -> str:
    lines = ["| point | job | state | final top-1 | best top-1 (epoch) | train s | run dir |",
             "|---|---|---|---|---|---|---|"]
    for r in sweep_rows(tracked, states):
        final = "-" if r["final_top1"] is None else f"{r['final_top1']:.2f}"
        best = "-" if r["best_top1"] is None else f"{r['best_top1']:.2f} ({r['best_epoch']})"
        secs = "-" if r["train_time_s"] is None else f"{r['train_time_s']:.0f}"
        lines.append(f"| {r['point']} | {r['job']} | {r['state']} | {final} | {best} | {secs} | {r['run_dir']} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    return submit(args) if args.command == "submit" else pipeline(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
