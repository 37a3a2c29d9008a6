"""The CIFAR-10 recipe table: validation accuracy over seeds, and the time each config takes.

    python -m visiontrain bench recipes [--data DIR] [--configs fast,resnet9,resnet18]
        [--seeds fast=20,resnet9=10,resnet18=10] [--nproc N] [--no-warmup] [--out DIR] [section.key=value ...]

Each config of configs/cifar10/ trains once per seed (run.seed = 0, 1, ...), each run a
fresh train.py process (torchrun with --nproc above 1), exactly as a user runs it. Before
the timed seeds, one untimed warm-up run per config fills the caches a first run pays for
(the numba and compilation caches, the OS page cache), as airbench counts.

Per run: the final validation top-1 (with the config's test-time augmentation), the
training seconds (train.py's `train_time_s`: the epochs' training loops, without
evaluation, set-up or the first layer's data-dependent initialization) and the process's
whole wall time, and the cores it kept busy (CPU seconds of the run's processes over that wall
time: on a CPU, how much of the machine training used). The table gives top-1 as mean +- sample
standard deviation over the seeds.

The data: `--data` holds a `visiontrain prep` output (train.beton/val.beton/meta.json, or image
folders). Without it, `--cifar-jpegs` (the CIFAR-10 training split as `train/<class>/*.jpg`,
a folder or .tar.gz) is split 45,000 / 5,000 (stratified, seed 0) by
`visiontrain prep cifar10 --val-fraction 0.1` into DIR/cifar10_45k_5k, reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from visiontrain.bench.timing import children_cpu_seconds
from visiontrain.infra import fileio
from visiontrain.infra.errors import TrainingFailed, UsageError
from visiontrain.infra.paths import SOURCE_TREE

ROOT = SOURCE_TREE
PER_RUN_KEYS = ("run.seed", "run.dir", "data.path")
CONFIGS = {"fast": "configs/cifar10/fast.yaml", "resnet9": "configs/cifar10/resnet9.yaml",
           "resnet18": "configs/cifar10/resnet18.yaml"}
DEFAULT_SEEDS = {"fast": 20, "resnet9": 10, "resnet18": 10}
WARMUP_SEED = 1000
SPLIT = "CIFAR-10 train split: 45,000 train / 5,000 val (stratified, seed 0)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="a prepared dataset (default: WORK/cifar10_45k_5k)")
    parser.add_argument("--cifar-jpegs", type=Path,
                        default=ROOT.parent / "shared" / "datasets" / "cifar10-train-jpeg.tar.gz",
                        help="CIFAR-10 training JPEGs (folder or .tar.gz) to prepare the 45k/5k split from")
    parser.add_argument("--work", type=Path, default=Path("runs/recipes_data"), help="prepared data (reused)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    defaults = ",".join(f"{name}={count}" for name, count in DEFAULT_SEEDS.items())
    parser.add_argument("--seeds", default="", metavar="CONFIG=N,...", help=f"runs per config (default: {defaults})")
    parser.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun above 1)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed first run")
    parser.add_argument("--label", default="", help="what the rows ran on, for the table (e.g. 'CPU, 2 processes')")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/recipes"))
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="applied to every run")


def seeds_per_config(configs: list[str], given: list[str]) -> dict[str, int]:
    configs, given = [c for c in configs if c], [g for g in given if g]
    unknown = [name for name in configs if name not in CONFIGS]
    if unknown:
        raise UsageError(f"--configs {unknown[0]}: unknown; allowed: {', '.join(CONFIGS)}")
    seeds = {name: DEFAULT_SEEDS[name] for name in configs}
    for item in given:
        name, _, count = item.partition("=")
        if name not in seeds or not count.isdigit() or int(count) < 1:
            raise UsageError(f"--seeds {item!r}: expected CONFIG=N with CONFIG one of {', '.join(seeds)} "
                             "and N >= 1")
        seeds[name] = int(count)
    return seeds


def prepare_split(jpegs: Path, work: Path, per_class: int | None = None) -> Path:
    """DIR/cifar10_45k_5k from the CIFAR-10 training JPEGs (once; reused when present).

    `per_class` keeps only the first N images of each class (DIR/cifar10_N_per_class): a small
    stand-in with the same layout and split, for rehearsing a measurement.
    """
    name = "cifar10_45k_5k" if per_class is None else f"cifar10_{per_class}_per_class"
    out = work / name
    if (out / "meta.json").is_file():
        return out
    if not jpegs.exists():
        raise UsageError(f"--cifar-jpegs {jpegs}: not found; give the CIFAR-10 training JPEGs or --data")
    source = jpegs
    if jpegs.is_file():
        source = work / ("cifar10_jpegs" if per_class is None else f"cifar10_jpegs_{per_class}_per_class")
        if not source.is_dir():  # extracted aside and renamed: an interrupted extraction is never reused
            work.mkdir(parents=True, exist_ok=True)
            try:
                with fileio.atomic_dir(source) as tmp, tarfile.open(jpegs) as tar:
                    tar.extractall(tmp, members=_first_per_class(tar, per_class), filter="data")
            except tarfile.TarError as err:
                why = str(err).splitlines()[0]
                raise UsageError(f"--cifar-jpegs {jpegs}: not a readable tar archive ({why})") from None
    result = subprocess.run([sys.executable, "-m", "visiontrain", "prep", "cifar10", "--source", str(source),
                             "--out", str(out), "--val-fraction", "0.1", "--seed", "0"],
                            cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise UsageError(f"preparing the 45k/5k split failed: {result.stderr.strip().splitlines()[-1]}")
    return out


def _first_per_class(tar: tarfile.TarFile, per_class: int | None):
    """The archive's members, or only the first `per_class` files of each folder (and every folder)."""
    seen: dict[str, int] = {}
    for member in tar:
        if per_class is not None and member.isfile():
            folder = member.name.rsplit("/", 1)[0]
            seen[folder] = seen.get(folder, 0) + 1
            if seen[folder] > per_class:
                continue
        yield member


def train_command(config: str, nproc: int, args: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, "train.py", "-c", config, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "train.py", "-c", config, *args]


def run_once(config: str, data: Path, run_dir: Path, seed: int, nproc: int, overrides: list[str]) -> dict[str, Any]:
    """One train.py run in a fresh run directory; its summary's figures plus the process's wall time."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a table of fresh runs, never a resumed one
    args = [*overrides, f"data.path={data}", f"run.dir={run_dir}", f"run.seed={seed}",
            "log.progress_bar=false", "log.plots=false"]
    cpu, start = children_cpu_seconds(), time.perf_counter()
    result = subprocess.run(train_command(config, nproc, args), cwd=ROOT, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, children_cpu_seconds() - cpu
    if result.returncode:
        # train.py's own one-line error (under torchrun, the launcher's report follows it).
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        why = errors[0].removeprefix("error: ") if errors else (result.stderr.strip().splitlines() or ["?"])[-1]
        raise TrainingFailed(f"{config} seed {seed} (run dir {run_dir}): {why}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seed": seed, "top1": summary["final"]["top1"], "train_s": summary["train_time_s"],
            "process_s": wall, "cores": cpu / wall, "epochs": summary["epochs"], "model": summary["model"],
            "world_size": summary["world_size"], "samples": summary["final"]["samples"],
            "train_samples": summary["train_samples"], "environment": summary["environment"]}


def aggregate(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean +- sample standard deviation of top-1 (0 for one run), mean seconds, over the seeds."""
    top1 = [r["top1"] for r in runs]
    first = runs[0]
    return {
        "config": name, "model": first["model"], "epochs": first["epochs"], "runs": len(runs),
        "world_size": first["world_size"], "train_samples": first["train_samples"], "val_samples": first["samples"],
        "top1_mean": statistics.fmean(top1), "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
        "top1_min": min(top1), "top1_max": max(top1),
        "train_s_mean": statistics.fmean(r["train_s"] for r in runs),
        "process_s_mean": statistics.fmean(r["process_s"] for r in runs),
        "cores_mean": statistics.fmean(r["cores"] for r in runs),
    }


def device_line(environment: dict[str, Any]) -> str:
    """The hardware and software of a run, from its summary's environment record."""
    packages = environment.get("packages", {})
    if environment.get("device_type") == "cuda":
        where = f"{environment.get('device_name')}, driver {environment.get('driver')}"
    else:
        where = f"CPU: {environment.get('cpu')} ({environment.get('cpu_count')} cores)"
    return f"{where}; torch {packages.get('torch')}, CUDA {environment.get('cuda')}"


def markdown(rows: list[dict[str, Any]], device: str, label: str, command: str) -> str:
    lines = [f"# CIFAR-10 recipes{f' ({label})' if label else ''}", "",
             f"`{command}`", "", f"{device}. Validation: {rows[0]['val_samples']:,} images, training: "
             f"{rows[0]['train_samples']:,} images per epoch.", "",
             "| config | model | epochs | processes | val top-1 (mean ± std) | runs | min-max | training s | "
             "process s | cores busy |", "|---|---|---:|---:|---|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['model']} | {r['epochs']} | {r['world_size']} | "
                     f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f} % | {r['runs']} | "
                     f"{r['top1_min']:.2f}-{r['top1_max']:.2f} | {r['train_s_mean']:.2f} | {r['process_s_mean']:.1f} | "
                     f"{r['cores_mean']:.2f} |")
    return "\n".join(lines) + "\n"


def write_table(out: Path, args: argparse.Namespace, data: Path, command: str, environment: dict[str, Any],
                rows: list[dict[str, Any]], all_runs: dict[str, list[dict[str, Any]]], seeds: dict[str, int]) -> str:
    """recipes.md and recipes.json as far as the runs go; `complete` says whether every asked-for run is in."""
    device = device_line(environment)
    text = markdown(rows, device, args.label, command)
    runs = {name: [{k: v for k, v in run.items() if k != "environment"} for run in config_runs]
            for name, config_runs in all_runs.items()}
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_text(out / "recipes.md", text)
    fileio.write_json(out / "recipes.json", {
        "split": SPLIT if args.data is None else str(data), "label": args.label, "command": command,
        "device": device, "environment": environment, "seeds_asked": seeds,
        "complete": all(len(runs.get(name, [])) == count for name, count in seeds.items()),
        "rows": rows, "runs": runs})
    return text


def main(args: argparse.Namespace, argv: list[str]) -> int:
    from visiontrain.train.run import check

    seeds = seeds_per_config(args.configs.split(","), args.seeds.split(","))
    if args.nproc < 1:
        raise UsageError(f"--nproc {args.nproc}: must be >= 1")
    for override in args.overrides:
        if override.partition("=")[0] in PER_RUN_KEYS:
            raise UsageError(f"{override}: the table sets {', '.join(PER_RUN_KEYS)} itself (use --data, --out)")
    # The runs start in the checkout (configs/ paths); the caller's relative paths mean the caller's directory.
    out = args.out.resolve()
    data = args.data.resolve() if args.data else prepare_split(args.cifar_jpegs.resolve(), args.work.resolve())
    if not data.is_dir():
        raise UsageError(f"--data {data}: not a directory")
    runs_dir = out / "runs"
    for name in seeds:  # every config and override checked before the first run starts
        check(ROOT / CONFIGS[name], [f"data.path={data}", f"run.dir={runs_dir / name / 'check'}", *args.overrides],
              args.nproc)
    command = shlex.join(["python", "-m", "visiontrain", "bench", *argv])
    rows, all_runs, environment = [], {}, {}
    for name, count in seeds.items():
        config = CONFIGS[name]
        if args.warmup:
            run_once(config, data, runs_dir / name / "warmup", WARMUP_SEED, args.nproc, args.overrides)
        runs = all_runs[name] = []
        for seed in range(count):
            runs.append(run_once(config, data, runs_dir / name / f"seed{seed}", seed, args.nproc, args.overrides))
            print(f"{name} seed {seed}: top-1 {runs[-1]['top1']:.2f} %, {runs[-1]['train_s']:.2f} s training, "
                  f"{runs[-1]['process_s']:.1f} s process", flush=True)
            environment = environment or runs[0]["environment"]
            # Written after every run: a table stopped part-way keeps the runs it finished.
            text = write_table(out, args, data, command, environment, [*rows, aggregate(name, runs)], all_runs,
                               seeds)
        rows.append(aggregate(name, runs))
    print(text)
    return 0
