"""The `visiontrain` command (also `python -m visiontrain`): one entry point, a subcommand per job.

    visiontrain train      ...   train or fine-tune (the same as python train.py)
    visiontrain prep       ...   write a dataset as FFCV .beton files
    visiontrain launch     ...   submit jobs and pipelines through submitit (SLURM or this machine)
    visiontrain evaluate   ...   evaluate trained weights and write a report
    visiontrain export     ...   export a trained model (ONNX, TorchScript, torch.export), checked
    visiontrain predict    ...   classify image files
    visiontrain checkpoint ...   a run's newest checkpoint as plain weights
    visiontrain bench      ...   throughput, loader, memory, overhead and recipe benchmarks
    visiontrain sweep      ...   hyperparameter search: Optuna studies of resumable runs, pruned early

`visiontrain SUBCOMMAND --help` describes each. Exit codes: 0 done, 2 bad usage or input,
3 stopped on a signal with a checkpoint, 1 any other failure.
"""

from __future__ import annotations

import importlib
import sys

from visiontrain.infra.errors import UsageError, run_cli

# Subcommand -> the module whose `main(argv)` runs it; imported only when chosen, so that
# `visiontrain --help` answers at once and a subcommand pays only for its own imports.
COMMANDS = {
    "train": "visiontrain.train.cli",
    "prep": "visiontrain.data.prep.cli",
    "launch": "visiontrain.launch.cli",
    "evaluate": "visiontrain.deploy.evaluate",
    "export": "visiontrain.deploy.export",
    "predict": "visiontrain.deploy.predict",
    "checkpoint": "visiontrain.checkpoint.cli",
    "bench": "visiontrain.bench.cli",
    "sweep": "visiontrain.sweep.cli",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UsageError(f"unknown subcommand {command!r}: use one of {', '.join(COMMANDS)}")
    return int(importlib.import_module(COMMANDS[command]).main(rest) or 0)


def run() -> int:
    """The console script."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(run())
