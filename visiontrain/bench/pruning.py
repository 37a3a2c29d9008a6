"""`python -m visiontrain bench pruning --data DIR`: successive halving against full-budget random search.

Both studies run the same sweep spec (default configs/sweeps/cifar10_fast.yaml) with the random sampler and
the same seed, so trial k proposes the same values in both; one prunes with successive halving (rungs at
epochs 1, 3, 9 with reduction factor 3), the other trains every trial to the end. Each trial's CPU time is
the trial process's own (user + system, from wait4). The table gives each study's best val top-1 and total
CPU hours; the plot, best-so-far against cumulative CPU hours. Studies already in --out are resumed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from visiontrain.infra.errors import TrainingFailed, UsageError
from visiontrain.infra.fileio import write_json, write_text

STUDIES = {"random": {"name": "none"},
           "halving": {"name": "successive_halving", "min_resource": 1, "reduction_factor": 3}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="a prepared CIFAR-10 (visiontrain prep cifar10)")
    parser.add_argument("--spec", type=Path, default=Path("configs/sweeps/cifar10_fast.yaml"))
    parser.add_argument("--train-images", type=int, default=5000, help="about this many training images")
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=9, help="a full trial's epochs (the last rung)")
    parser.add_argument("--seed", type=int, default=0, help="the random sampler's seed, the same in both studies")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/pruning"))
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="added to every trial")


def _train_samples(data: Path) -> int:
    meta = data / "meta.json"
    if not meta.is_file():
        raise UsageError(f"--data {data}: no meta.json; write the dataset with visiontrain prep cifar10")
    return int(json.loads(meta.read_text())["splits"]["train"]["samples"])


def study_specs(args: argparse.Namespace) -> dict[str, dict]:
    if not args.spec.is_file():
        raise UsageError(f"--spec {args.spec} does not exist")
    base = yaml.safe_load(args.spec.read_text())
    fraction = min(1.0, args.train_images / _train_samples(args.data))
    overrides = [*base.get("overrides", []), f"data.path={args.data}", f"data.train_fraction={fraction:.6f}",
                 f"train.epochs={args.epochs}", "log.progress_bar=false", *args.overrides]
    sampler = {"name": "random", "seed": args.seed}
    return {name: {**base, "overrides": overrides, "trials": args.trials, "sampler": sampler, "pruner": pruner}
            for name, pruner in STUDIES.items()}


def run(args: argparse.Namespace, command: str) -> dict:
    specs = study_specs(args)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, spec in specs.items():
        spec_file = args.out / f"{name}.yaml"
        write_text(spec_file, yaml.safe_dump(spec, sort_keys=False))
        result = subprocess.run([sys.executable, "-m", "visiontrain", "sweep", "run", str(spec_file), "--study",
                                 str(args.out / name), "--workers", str(args.workers)], capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            kind = UsageError if result.returncode == 2 else TrainingFailed
            raise kind(f"sweep {name} failed (exit {result.returncode}): {tail}")
        rows[name] = study_row(args.out / name)
    doc = {"command": command, "data": str(args.data), "train_images": args.train_images, "trials": args.trials,
           "epochs": args.epochs, "spec": str(args.spec), "studies": rows}
    write_json(args.out / "results.json", doc)
    plot(rows, args.out / "best_vs_cpu_hours.png")
    doc["markdown"] = markdown(doc)
    write_text(args.out / "results.md", doc["markdown"])
    return doc


def study_row(study_path: Path) -> dict:
    from visiontrain.sweep.study import StudyDir

    trials = sorted(StudyDir(study_path).open().get_trials(), key=lambda t: t.datetime_complete or t.datetime_start)
    curve, cpu, best = [], 0.0, None
    for t in trials:
        cpu += float(t.user_attrs.get("cpu_seconds", 0.0))
        if t.state.name == "COMPLETE" and (best is None or t.value > best):
            best = t.value
        curve.append([round(cpu / 3600, 4), best])
    states = [t.state.name for t in trials]
    return {"best_top1": best, "cpu_hours": cpu / 3600, "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
            "epochs_trained": sum(max(t.intermediate_values, default=0) for t in trials), "curve": curve,
            "best_params": max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value).params
            if best is not None else None}


def markdown(doc: dict) -> str:
    rows = doc["studies"]
    full = rows["random"]["cpu_hours"]
    lines = [f"`{doc['command']}`", "",
             "| study | trials complete / pruned | epochs trained | best val top-1 | CPU hours | CPU vs random |",
             "|---|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        best = f"{r['best_top1']:.2f} %" if r["best_top1"] is not None else "-"
        ratio = f"{full / r['cpu_hours']:.2f}x less" if name != "random" and r["cpu_hours"] else "-"
        lines.append(f"| {name} | {r['complete']} / {r['pruned']} | {r['epochs_trained']} | {best} | "
                     f"{r['cpu_hours']:.3f} | {ratio} |")
    return "\n".join(lines) + "\n"


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for name, r in rows.items():
        points = [(hours, best) for hours, best in r["curve"] if best is not None]
        if points:
            axes.step(*zip(*points), where="post", marker="o", label=name)
    axes.set_xlabel("cumulative CPU hours")
    axes.set_ylabel("best val top-1 so far (%)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
