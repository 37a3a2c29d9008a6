"""slurm/*.sh against a real SLURM cluster: world size, pipeline dependency, preemption."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.helpers import ROOT, assert_identical_continuation, checkpoint_logged, read_json, read_jsonl
from tests.slurm.conftest import CPU_JOB, EXTRA, job_field, overrides, sbatch, wait_for_state

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def test_finetune_script_runs_two_tasks_that_form_a_world_of_two(uninterrupted, start_weights):
    run_dir, job = uninterrupted
    summary = read_json(run_dir / "summary.json")
    assert summary["world_size"] == 2 and summary["launcher"] == "slurm"
    assert len({r["params_sha256"] for r in summary["ranks"]}) == 1
    assert summary["init"]["init_from"] == str(start_weights)
    assert "2 task(s), head node" in (run_dir / f"slurm-{job}.log").read_text()


def test_pipeline_runs_finetuning_after_pretraining_from_its_weights(slurm, shapes_dir, tmp_path):
    pipeline_dir = tmp_path / "pipeline"
    # run.dir= among the settings and RUN_DIR (which the pipeline sets for each job): RUN_DIR wins, for the
    # job's log and for the training alike.
    tiny = " ".join(overrides(shapes_dir, tmp_path / "ignored", "train.epochs=1"))
    job, rc = sbatch(slurm, "slurm/pipeline.sh", "configs/demo/train.yaml", "configs/demo/train.yaml",
                     options=(f"--output={tmp_path}/pipeline-%j.out",),
                     extra_env={"PIPELINE_DIR": str(pipeline_dir), "PRETRAIN_OVERRIDES": tiny,
                                "FINETUNE_OVERRIDES": tiny,
                                "SBATCH_ARGS": " ".join([*CPU_JOB, f"--output={tmp_path}/job-%j.out"])})
    out = (tmp_path / f"pipeline-{job}.out").read_text()
    assert rc == 0, out
    ids = [line.split("job ")[1].split()[0].rstrip(",") for line in out.splitlines() if ": job " in line]
    pretrain_job, finetune_job = ids
    assert job_field(slurm, finetune_job, "Dependency") in (f"afterok:{pretrain_job}(unfulfilled)", "(null)")
    assert wait_for_state(slurm, pretrain_job, ("COMPLETED", "FAILED", "CANCELLED")) == "COMPLETED"
    assert wait_for_state(slurm, finetune_job, ("COMPLETED", "FAILED", "CANCELLED")) == "COMPLETED"
    pre = read_json(pipeline_dir / "pretrain" / "summary.json")
    fine = read_json(pipeline_dir / "finetune" / "summary.json")
    assert fine["init"]["init_from"] == str(pipeline_dir / "pretrain" / "weights.safetensors")
    # The dependency held: fine-tuning started after pretraining had written its summary.
    first_event = read_jsonl(pipeline_dir / "finetune" / "metrics.jsonl")[0]["time"]
    assert first_event > (pipeline_dir / "pretrain" / "summary.json").stat().st_mtime
    assert pre["world_size"] == fine["world_size"] == 2
    assert (pipeline_dir / "pretrain" / f"slurm-{pretrain_job}.log").is_file()
    assert (pipeline_dir / "finetune" / f"slurm-{finetune_job}.log").is_file()
    assert not (tmp_path / "ignored").exists()


def test_usr1_checkpoints_requeues_and_ends_like_an_uninterrupted_run(slurm, shapes_dir, start_weights,
                                                                     uninterrupted, tmp_path):
    options = (*CPU_JOB, f"--output={tmp_path}/slurm-%j.out")
    run_dir = tmp_path / "preempted"
    job, _ = sbatch(slurm, "slurm/finetune.sh", "configs/demo/train.yaml",
                    *overrides(shapes_dir, run_dir, f"finetune.init_from={start_weights}", *EXTRA),
                    options=options, wait=False)
    deadline = time.time() + 240
    while not checkpoint_logged(run_dir, epoch=1):
        assert time.time() < deadline, "no epoch-1 checkpoint"
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm, check=True)  # batch shell and every task
    deadline = time.time() + 120
    while job_field(slurm, job, "Restarts") in ("", "0") or job_field(slurm, job, "JobState") != "PENDING":
        assert time.time() < deadline, "the job was not requeued"
        time.sleep(0.2)
    # SLURM holds a requeued job ~2 minutes before it may start again; release it sooner, but
    # not within the second of the requeue (slurmd refuses a credential from the same second).
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm, check=True)
    assert wait_for_state(slurm, job, ("COMPLETED", "FAILED", "CANCELLED")) == "COMPLETED"
    events = read_jsonl(run_dir / "metrics.jsonl")
    assert [e["signal"] for e in events if e["event"] == "preempted"] == ["SIGUSR1"]
    assert len([e for e in events if e["event"] == "resume"]) == 1
    log = (run_dir / f"slurm-{job}.log").read_text()
    assert "requeueing job" in log and "(restart 1)" in log
    assert_identical_continuation(uninterrupted[0], run_dir)


def test_failed_pretraining_cancels_the_pipelines_finetuning(slurm, tmp_path):
    job, rc = sbatch(slurm, "slurm/pipeline.sh", "configs/demo/train.yaml", "configs/demo/train.yaml",
                     options=(f"--output={tmp_path}/pipeline-%j.out",),
                     extra_env={"PIPELINE_DIR": str(tmp_path / "p"), "PRETRAIN_OVERRIDES": "optim.lr=-1",
                                "SBATCH_ARGS": " ".join([*CPU_JOB, f"--output={tmp_path}/job-%j.out"])})
    out = (tmp_path / f"pipeline-{job}.out").read_text()
    pretrain_job, finetune_job = [line.split("job ")[1].split()[0].rstrip(",") for line in out.splitlines()
                                  if ": job " in line]
    assert wait_for_state(slurm, pretrain_job, ("COMPLETED", "FAILED", "CANCELLED")) == "FAILED"
    assert job_field(slurm, pretrain_job, "ExitCode") == "2:0"  # the config error, before any training
    assert wait_for_state(slurm, finetune_job, ("COMPLETED", "FAILED", "CANCELLED")) == "CANCELLED"


def test_missing_config_or_mode_and_gpus_on_a_node_without_them_are_refused(slurm, tmp_path):
    job, rc = sbatch(slurm, "slurm/pretrain.sh", "configs/missing.yaml",
                     options=(*CPU_JOB, f"--output={tmp_path}/slurm-%j.out"))
    assert rc == 2 and "config configs/missing.yaml does not exist" in (tmp_path / f"slurm-{job}.out").read_text()
    job, rc = sbatch(slurm, "slurm/benchmark.sh", options=(*CPU_JOB[:1], "--gpus-per-node=0", "--cpus-per-task=1",
                                                          f"--output={tmp_path}/slurm-%j.out"))
    assert rc == 2 and "usage: sbatch slurm/benchmark.sh MODE" in (tmp_path / f"slurm-{job}.out").read_text()
    result = subprocess.run(["sbatch", "slurm/pretrain.sh", "configs/demo/train.yaml"], cwd=ROOT, env=slurm,
                            capture_output=True, text=True)  # the default asks for 8 GPUs per node
    assert result.returncode != 0 and "Invalid generic resource" in result.stderr
