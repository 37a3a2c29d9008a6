"""python -m visiontrain bench recipes: fresh train.py runs per seed, summarized as the README's table."""

from __future__ import annotations

import os
import statistics
import subprocess

import pytest

from tests.helpers import PYTHON, ROOT, ok, read_json

pytestmark = pytest.mark.slow  # two one-epoch training runs of two processes each
TINY = ("data.image_size=16", "data.val_image_size=16", "data.crop_padding=2", "model.width=8", "train.epochs=1",
        "train.batch_size=64", "schedule.warmup_epochs=0.5", "train.precision=fp32", "run.device=cpu")


def test_recipe_table_runs_each_seed_from_scratch_and_reports_their_mean_and_std(shapes_dir, tmp_path):
    out = tmp_path / "table"
    # From another directory, with relative paths: they mean the caller's directory.
    result = ok(subprocess.run([PYTHON, "-m", "visiontrain", "bench", "recipes", "--configs", "fast", *TINY,
                                "--data", str(shapes_dir), "--seeds", "fast=2", "--no-warmup", "--nproc", "2",
                                "--out", "table"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}))
    table = read_json(out / "recipes.json")
    runs = table["runs"]["fast"]
    assert [r["seed"] for r in runs] == [0, 1] and all(r["world_size"] == 2 for r in runs)
    summaries = [read_json(out / "runs" / "fast" / f"seed{seed}" / "summary.json") for seed in (0, 1)]
    top1 = [s["final"]["top1"] for s in summaries]
    assert [r["top1"] for r in runs] == top1
    digests = [{rank["params_sha256"] for rank in s["ranks"]} for s in summaries]
    assert all(len(d) == 1 for d in digests) and digests[0] != digests[1]  # ranks agree; two seeds, two models
    row = table["rows"][0]
    assert row["top1_mean"] == pytest.approx(statistics.fmean(top1))
    assert row["top1_std"] == pytest.approx(statistics.stdev(top1))
    assert row["train_s_mean"] == pytest.approx(statistics.fmean(s["train_time_s"] for s in summaries))
    assert all(r["process_s"] > r["train_s"] > 0 for r in runs)
    assert all(0.2 < r["cores"] <= (os.cpu_count() or 1) + 0.05 for r in runs)  # CPU seconds over wall seconds
    assert "| fast | cifar_fast | 1 | 2 |" in (out / "recipes.md").read_text() and "| fast |" in result.stdout
