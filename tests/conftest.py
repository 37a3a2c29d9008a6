"""Shared fixtures: a tiny generated dataset, and helpers that run the real entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """10 classes x (40 train + 11 val) generated 16x16 images (an odd val count on purpose)."""
    out = tmp_path_factory.mktemp("data") / "shapes"
    subprocess.run([PYTHON, "-m", "data_prep", "synthetic", "--out", str(out), "--train-per-class", "40",
                    "--val-per-class", "11", "--size", "16"], check=True, cwd=ROOT, capture_output=True)
    return out


def tiny_args(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """train.py arguments for a run of a few seconds on the tiny dataset."""
    return ["-c", "configs/demo/train.yaml", f"data.path={data_dir}", f"run.dir={run_dir}",
            "data.image_size=16", "data.val_image_size=16", "data.crop_padding=2", "data.num_workers=0",
            "model.width=8", "train.batch_size=64", "train.epochs=2", "schedule.warmup_epochs=0.5",
            "log.progress_bar=false", "log.every_steps=2", *extra]


def run_train(args: list[str], nproc: int = 1, env: dict | None = None, timeout: float = 300,
              launcher: str = "torchrun") -> subprocess.CompletedProcess:
    if nproc == 1 and launcher == "torchrun":
        cmd = [PYTHON, "train.py", *args]
    elif launcher == "torchrun":
        cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "train.py", *args]
    else:
        cmd = [str(Path(PYTHON).parent / "accelerate"), "launch", *launcher.split()[1:], "train.py", *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
