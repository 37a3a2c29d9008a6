"""`make demo`'s script at a smaller, faster scale (one process per run, 4 epochs of batch
50): pretrain -> fine-tune -> baseline -> report. Transfer is measured in test_finetune.py."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import PYTHON, ROOT, read_json

pytestmark = pytest.mark.slow


def test_demo_pretrains_finetunes_and_reports(tmp_path):
    root = tmp_path / "demo-runs"
    env = {**os.environ, "DEMO_DATA": str(tmp_path / "shapes"), "DEMO_RUN_DIR": str(root),
           "DEMO_DATA_ARGS": "--train-per-class 200 --val-per-class 20 --size 24",
           "DEMO_OVERRIDES": "data.image_size=24 data.val_image_size=24 train.epochs=4 train.batch_size=50 "
                             "log.tensorboard=false",
           "DEMO_NPROC": "1",
           "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}"}  # as `make demo` sets it
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    pre, fine, scratch = (read_json(root / name / "summary.json") for name in ("pretrain", "finetune", "scratch"))
    assert pre["epochs"] == fine["epochs"] == scratch["epochs"] == 4
    assert pre["final"]["samples"] == fine["final"]["samples"] == 100  # 5 classes x 20 val images
    assert fine["train_samples"] == 100  # 10% of 5 x 200
    assert fine["init"]["init_from"] == str(root / "pretrain" / "weights.safetensors")
    assert scratch["init"].get("init_from") is None
    # Chance is 20% on 5 balanced classes; 30% on 100 images is 2.5 standard deviations above it
    # (4 short epochs here: the full demo reaches 99%, see the README).
    assert pre["final"]["top1"] >= 30.0
    assert f"val top-1 {fine['final']['top1']:.1f}%" in result.stdout
    assert f"evaluation report {root}/finetune/eval/report.md" in result.stdout
    assert (root / "finetune" / "eval" / "report.md").is_file()
