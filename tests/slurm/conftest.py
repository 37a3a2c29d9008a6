"""Real SLURM test clusters for the tests in this folder (scripts/slurm_cluster.sh): one node, and two nodes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import PYTHON, ROOT, tiny_args
from visiontrain.config import ModelConfig
from visiontrain.models import build_model

CLUSTER_SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items) -> None:
    """Every test in this folder runs jobs on a test cluster started here: its daemons need their binaries and
    root. tests/conftest.py skips the marked tests, naming what is missing, where either is lacking."""
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.requires_slurm)
            item.add_marker(pytest.mark.requires_root)


def start_cluster(tmp_path_factory, nodes: int, port: int):
    """Start a test cluster of `nodes` nodes; yields the environment for sbatch/scontrol pointing at it."""
    state = tmp_path_factory.mktemp(f"slurm-cluster-{nodes}")
    env = {**os.environ, "SLURM_TEST_PORT": str(port)}
    try:
        started = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start", str(state), "--nodes", str(nodes)],
                                 capture_output=True, text=True, timeout=120, env=env)
    finally:  # a start that failed or hung leaves nothing running
        if "started" not in locals() or started.returncode != 0:
            subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(state)], capture_output=True, timeout=60, env=env)
    assert started.returncode == 0, started.stderr
    env = {**env, "SLURM_CONF": str(state / "slurm.conf"), "OMP_NUM_THREADS": "1",
           "VISIONTRAIN_VENV": str(Path(PYTHON).parents[1]), "CLUSTER_DIR": str(state)}
    try:
        yield env
    finally:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(state)], capture_output=True, timeout=60, env=env)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A single-node cluster (this machine) for the session."""
    yield from start_cluster(tmp_path_factory, nodes=1, port=16817)


@pytest.fixture(scope="session")
def slurm2(tmp_path_factory):
    """A two-node cluster for the session: node1 and node2, each a network namespace with its own address."""
    yield from start_cluster(tmp_path_factory, nodes=2, port=17817)


def cluster_nodes(env: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, network namespace, address) of each node of a multi-node test cluster."""
    lines = (Path(env["CLUSTER_DIR"]) / "nodes").read_text().splitlines()
    return [tuple(line.split()) for line in lines]


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
