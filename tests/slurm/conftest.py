"""A real single-node SLURM cluster for the tests in this folder (scripts/slurm_cluster.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import PYTHON, ROOT, tiny_args
from visiontrain.config import ModelConfig
from visiontrain.models import build_model

CLUSTER_SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> dict[str, str]:
    """Environment for sbatch/scontrol pointing at a cluster started for this session."""
    missing = [tool for tool in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"SLURM TESTS NOT RUN: {', '.join(missing)} not installed (make setup installs slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("SLURM TESTS NOT RUN: the test cluster's daemons need root")
    state = tmp_path_factory.mktemp("slurm-cluster")
    subprocess.run(["bash", str(CLUSTER_SCRIPT), "start", str(state)], check=True, capture_output=True, text=True,
                   timeout=120)
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "OMP_NUM_THREADS": "1",
           "VISIONTRAIN_VENV": str(Path(PYTHON).parents[1])}
    yield env
    subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(state)], capture_output=True, timeout=60)


# CPU jobs on the test node: 2 tasks, no GPU, one core each.
CPU_JOB = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]


def sbatch(env: dict[str, str], script: str, *args: str, options: tuple[str, ...] = (), wait: bool = True,
           extra_env: dict[str, str] | None = None) -> tuple[str, int]:
    """(job id, exit code of `sbatch [--wait]`)."""
    cmd = ["sbatch", "--parsable", *(["--wait"] if wait else []), *options, script, *args]
    result = subprocess.run(cmd, cwd=ROOT, env={**env, **(extra_env or {})}, capture_output=True, text=True,
                            timeout=600)
    job = result.stdout.strip().split(";")[0]
    assert job or result.returncode, result.stderr
    return job, result.returncode


def job_field(env: dict[str, str], job: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    for token in out.split():
        if token.startswith(f"{field}="):
            return token.split("=", 1)[1]
    return ""


def wait_for_state(env: dict[str, str], job: str, states: tuple[str, ...], timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_field(env, job, "JobState")
        if state in states:
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job} never reached {states} (last: {job_field(env, job, 'JobState')})")


def overrides(shapes_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return tiny_args(shapes_dir, run_dir, "data.num_workers=0", *extra)[2:]  # without "-c CONFIG"


EXTRA = ("train.epochs=3", "checkpoint.signal_check_steps=2")


@pytest.fixture(scope="session")
def start_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "start.safetensors"
    save_file(build_model(ModelConfig(name="resnet9", width=8)).state_dict(), str(path))
    return path


@pytest.fixture(scope="session")
def uninterrupted(slurm, shapes_dir, start_weights, tmp_path_factory) -> tuple[Path, str]:
    """A 2-task fine-tuning job run to the end: (run dir, job id)."""
    run_dir = tmp_path_factory.mktemp("slurm-runs") / "uninterrupted"
    job, rc = sbatch(slurm, "slurm/finetune.sh", "configs/demo/train.yaml",
                     *overrides(shapes_dir, run_dir, f"finetune.init_from={start_weights}", *EXTRA),
                     options=(*CPU_JOB, f"--output={run_dir.parent}/slurm-%j.out"))
    assert rc == 0, (run_dir / f"slurm-{job}.log").read_text()[-3000:]
    return run_dir, job
