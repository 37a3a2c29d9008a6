"""python -m visiontrain launch pipeline --cluster local: the chain on one machine, with submitit."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import PYTHON, ROOT, read_json, read_jsonl, tiny_args

pytestmark = pytest.mark.slow


def test_local_pipeline_runs_pretraining_then_finetuning_from_its_weights(shapes_dir, tmp_path):
    pre, fine = tmp_path / "pretrain", tmp_path / "finetune"
    overrides = tiny_args(shapes_dir, pre, "train.epochs=1")[2:]
    result = subprocess.run([PYTHON, "-m", "visiontrain", "launch", "pipeline", "--cluster", "local", "--pretrain",
                             "configs/demo/train.yaml", "--finetune", "configs/demo/train.yaml", *overrides,
                             f"finetune:run.dir={fine}", "finetune:finetune.freeze=backbone", "--poll", "0.5"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.index("COMPLETED") < result.stdout.index("submitted finetune")
    fine_summary = read_json(fine / "summary.json")
    assert fine_summary["init"]["init_from"].startswith(str(pre)) and fine_summary["world_size"] == 1
    assert read_jsonl(pre / "metrics.jsonl")[-1]["time"] < read_jsonl(fine / "metrics.jsonl")[0]["time"]
