"""`python -m visiontrain bench robustness --data DIR`: standard, FGSM-RS, N-FGSM and PGD-7 training side by side.

Each method trains `configs/cifar10/adversarial.yaml` (ResNet-9 with the recipe of "Fast is better than free"; or
--config, e.g. configs/cifar10/adversarial_fast.yaml for cifar_fast) on --train-images of the training split
with train.py, as a user runs it; its final weights are then attacked by `evaluate --attack pgd` (PGD-20) and
`evaluate --attack apgd` (APGD-CE + APGD-DLR) on the validation split. The table gives clean top-1, both robust
top-1s and the training time, then each single-step method against PGD-7. `--collapse-epsilon 16/255` adds a
run of each single-step method chosen (FGSM-RS, N-FGSM) at that epsilon, where FGSM-RS is known to overfit
catastrophically, to show whether the robustness check stopped it (and whether N-FGSM's wider noise avoided it).
Runs and evaluations already done in --out are kept (rerun the command to continue an interrupted table).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from visiontrain.infra.errors import TrainingFailed, UsageError
from visiontrain.infra.fileio import write_json, write_text

METHODS = {"standard": ["adversarial.method=none"], "fgsm_rs": ["adversarial.method=fgsm_rs"],
           "n_fgsm": ["adversarial.method=n_fgsm"],
           "pgd7": ["adversarial.method=pgd", "adversarial.steps=7"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True,
                        help="a .beton dataset directory (visiontrain prep cifar10)")
    parser.add_argument("--config", default="configs/cifar10/adversarial.yaml",
                        help="default: ResNet-9 (configs/cifar10/adversarial_fast.yaml: cifar_fast)")
    parser.add_argument("--train-images", type=int, default=10000, help="about this many training images")
    parser.add_argument("--epochs", type=int, default=15,
                        help="default 15, the paper's (shorter runs: set schedule.warmup_epochs below it)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--pgd-images", type=int, default=1000, help="validation images attacked by PGD-20")
    parser.add_argument("--apgd-images", type=int, default=500, help="validation images attacked by APGD")
    parser.add_argument("--apgd-steps", type=int, default=50)
    parser.add_argument("--collapse-epsilon", help="also a run of each single-step method at this epsilon (16/255)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/robustness"))
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        # A run's own bad input (exit 2) stays a usage error; anything else is a failed run (exit 1).
        kind = UsageError if result.returncode == 2 else TrainingFailed
        raise kind(f"{' '.join(cmd[:4])} ... failed (exit {result.returncode}): {tail}")


def _train_samples(data: Path) -> int:
    return int(json.loads((data / "meta.json").read_text())["splits"]["train"]["samples"])


def run_table(args: argparse.Namespace, command: str) -> dict:
    if not (args.data / "meta.json").is_file():
        raise UsageError(f"--data {args.data}: no meta.json; write the dataset with visiontrain prep cifar10")
    fraction = min(1.0, args.train_images / _train_samples(args.data))
    common = [f"data.path={args.data}", f"data.train_fraction={fraction:.6f}", f"train.epochs={args.epochs}",
              "log.progress_bar=false", *args.overrides]
    runs = [(name, METHODS[name]) for name in args.methods]
    if args.collapse_epsilon:
        for method in ("fgsm_rs", "n_fgsm"):
            if method in args.methods:
                runs.append((f"{method}_eps{args.collapse_epsilon.replace('/', '_')}",
                             [f"adversarial.method={method}", f"adversarial.epsilon={args.collapse_epsilon}"]))
    rows = []
    for name, overrides in runs:
        run_dir = args.out / name
        if not (run_dir / "summary.json").is_file():
            _run([sys.executable, "train.py", "-c", args.config, f"run.dir={run_dir}", *common, *overrides])
        summary = json.loads((run_dir / "summary.json").read_text())
        row = {"method": name, "overrides": overrides, "train_seconds": summary["train_time_s"],
               "epochs": summary["epochs"], "stopped_early": summary["stopped_early"]}
        for attack, images, steps in (("pgd", args.pgd_images, 20), ("apgd", args.apgd_images, args.apgd_steps)):
            out = run_dir / f"eval_{attack}"
            if not (out / "robust.json").is_file():
                _run([sys.executable, "-m", "visiontrain", "evaluate", "--weights", str(run_dir), "--attack", attack,
                      "--attack-steps", str(steps), "--attack-images", str(images), "--out", str(out)])
            robust = json.loads((out / "robust.json").read_text())
            row[f"{attack}_top1"], row[f"{attack}_images"] = robust["robust_top1"], robust["samples"]
            row["clean_top1"] = json.loads((out / "eval.json").read_text())["top1"]
            row[f"{attack}_seconds"] = robust["seconds"]
        events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        row["check"] = [round(e["robust_top1"], 1) for e in events if e["event"] == "val" and "robust_top1" in e]
        row["collapse_epoch"] = next((e["epoch"] for e in events if e["event"] == "collapse"), None)
        rows.append(row)
    doc = {"command": command, "data": str(args.data), "train_images": args.train_images, "epochs": args.epochs,
           "config": args.config, "rows": rows}
    write_json(args.out / "results.json", doc)
    doc["markdown"] = markdown(doc)
    write_text(args.out / "results.md", doc["markdown"])
    return doc


def markdown(doc: dict) -> str:
    base = next((r["train_seconds"] for r in doc["rows"] if r["method"] == "standard"), None)
    lines = [f"`{doc['command']}`", "",
             "| training | clean top-1 | PGD-20 top-1 | APGD-CE+DLR top-1 | train time | vs standard | "
             "robust check per epoch | collapse |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in doc["rows"]:
        ratio = f"{r['train_seconds'] / base:.1f}x" if base else "-"
        lines.append(f"| {r['method']} | {r['clean_top1']:.2f} % | {r['pgd_top1']:.2f} % ({r['pgd_images']}) | "
                     f"{r['apgd_top1']:.2f} % ({r['apgd_images']}) | {r['train_seconds'] / 60:.1f} min | {ratio} | "
                     f"{', '.join(map(str, r['check'])) or '-'} | "
                     f"{'epoch ' + str(r['collapse_epoch']) if r['collapse_epoch'] else '-'} |")
    # The question the table is for: how close does one attack step per batch come to seven, for how much less
    multi = next((r for r in doc["rows"] if r["method"] == "pgd7"), None)
    single = [r for r in doc["rows"] if r["method"] in ("fgsm_rs", "n_fgsm") and r["train_seconds"]] if multi else []
    if single:
        lines.append("")
    for r in single:
        lines.append(f"{r['method']} against pgd7: PGD-20 {r['pgd_top1'] - multi['pgd_top1']:+.2f} points, "
                     f"APGD {r['apgd_top1'] - multi['apgd_top1']:+.2f} points, "
                     f"training time {multi['train_seconds'] / r['train_seconds']:.1f}x shorter")
    return "\n".join(lines) + "\n"
