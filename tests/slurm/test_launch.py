"""python -m visiontrain launch (submitit) against the real SLURM test cluster: a sweep, the
pretrain -> fine-tune pipeline (and its cancellation), and preemption with requeue."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import PYTHON, ROOT, assert_identical_continuation, checkpoint_logged, read_json, read_jsonl
from tests.slurm.conftest import EXTRA, job_field, overrides, wait_for_state
from visiontrain.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]
CONFIG = "configs/demo/train.yaml"


def launch(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "visiontrain", "launch", *args, "--cluster", "slurm", "--cpus-per-task", "1",
                           "--poll", "0.5"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _job_ids(stdout: str) -> list[str]:
    return [line.split(": job ")[1].split()[0].rstrip(",") for line in stdout.splitlines()
            if line.startswith("submitted ")]


def test_sweep_runs_one_job_per_value_and_prints_a_results_table(slurm, shapes_dir, tmp_path):
    base = tmp_path / "sweep"
    result = launch(slurm, "submit", "-c", CONFIG, *overrides(shapes_dir, base, "train.epochs=1"),
                    "--sweep", "optim.lr=0.05,0.1,0.2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((base / "sweep.json").read_text())
    assert [r["point"] for r in rows] == ["optim.lr=0.05", "optim.lr=0.1", "optim.lr=0.2"]
    assert all(r["state"] == "COMPLETED" and r["final_top1"] is not None for r in rows)
    for row, lr in zip(rows, (0.05, 0.1, 0.2)):
        assert Path(row["run_dir"]) == base / f"optim.lr-{lr}"
        assert load_config(Path(row["run_dir"]) / "config.yaml").optim.lr == lr
    table = result.stdout[result.stdout.index("| point |"):]
    assert len([line for line in table.splitlines() if "COMPLETED" in line]) == 3
    assert len(set(_job_ids(result.stdout))) == 3


def test_pipeline_finetunes_from_the_pretraining_weights_after_it_ends(slurm, shapes_dir, tmp_path):
    pre, fine = tmp_path / "pretrain", tmp_path / "finetune"
    result = launch(slurm, "pipeline", "--pretrain", CONFIG, "--finetune", CONFIG,
                    *overrides(shapes_dir, pre, "train.epochs=1"), f"finetune:run.dir={fine}",
                    "--tasks-per-node", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pre_job, fine_job = _job_ids(result.stdout)
    assert f"afterok:{pre_job}" in job_field(slurm, fine_job, "Dependency") or \
        job_field(slurm, fine_job, "Dependency") == "(null)"  # satisfied dependencies are cleared
    pre_summary, fine_summary = read_json(pre / "summary.json"), read_json(fine / "summary.json")
    assert pre_summary["world_size"] == fine_summary["world_size"] == 2
    assert fine_summary["init"]["init_from"].startswith(str(pre))
    assert read_jsonl(pre / "metrics.jsonl")[-1]["time"] < read_jsonl(fine / "metrics.jsonl")[0]["time"]


def test_failed_pretraining_cancels_the_finetuning_and_exits_1(slurm, shapes_dir, tmp_path):
    pre, fine = tmp_path / "pretrain", tmp_path / "finetune"
    result = launch(slurm, "pipeline", "--pretrain", CONFIG, "--finetune", CONFIG,
                    *overrides(shapes_dir, pre), f"pretrain:data.path={tmp_path / 'missing'}",
                    f"finetune:run.dir={fine}")
    assert result.returncode == 1
    assert "SLURM cancelled the fine-tuning" in result.stderr
    pre_job, fine_job = _job_ids(result.stdout)
    assert job_field(slurm, pre_job, "JobState") == "FAILED"
    assert job_field(slurm, fine_job, "JobState") == "CANCELLED"


def test_usr1_checkpoints_requeues_through_submitit_and_ends_like_an_uninterrupted_run(
        slurm, shapes_dir, start_weights, uninterrupted, tmp_path):
    run_dir = tmp_path / "preempted"
    result = launch(slurm, "submit", "-c", CONFIG,
                    *overrides(shapes_dir, run_dir, f"finetune.init_from={start_weights}", *EXTRA),
                    "--tasks-per-node", "2", "--no-wait")
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = _job_ids(result.stdout)
    deadline = time.time() + 240
    while not checkpoint_logged(run_dir, epoch=1):
        assert time.time() < deadline, "no epoch-1 checkpoint"
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm, check=True)
    deadline = time.time() + 120
    while job_field(slurm, job, "Restarts") in ("", "0") or job_field(slurm, job, "JobState") != "PENDING":
        assert time.time() < deadline, "the job was not requeued"
        time.sleep(0.2)
    time.sleep(3)  # see test_slurm_scripts: not within the second of the requeue
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm, check=True)
    assert wait_for_state(slurm, job, ("COMPLETED", "FAILED", "CANCELLED")) == "COMPLETED"
    events = read_jsonl(run_dir / "metrics.jsonl")
    assert [e["signal"] for e in events if e["event"] == "preempted"] == ["SIGUSR1"]
    assert len([e for e in events if e["event"] == "resume"]) == 1
    assert_identical_continuation(uninterrupted[0], run_dir)
