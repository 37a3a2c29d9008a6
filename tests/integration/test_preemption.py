"""Stopping on a signal: checkpoint at a step boundary, exit code 3, exact resume.

Ranks are started the way `srun` starts them (one process per task, SLURM_* variables),
so a signal reaches each train.py directly, as SLURM's `--signal=USR1@T` delivers it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, read_jsonl, tiny_args
from tests.integration.test_train import _assert_identical_continuation, _checkpoint_logged

pytestmark = pytest.mark.slow
ARGS = ("train.epochs=3", "checkpoint.signal_check_steps=2", "data.num_workers=0")


def start_tasks(args: list[str], port: int) -> list[subprocess.Popen]:
    procs = []
    for rank in range(2):
        env = {**os.environ, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_STEP_NUM_TASKS": "2",
               "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_JOB_ID": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        procs.append(subprocess.Popen([PYTHON, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def wait_all(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    return [(p.wait(timeout=300), p.stderr.read()) for p in procs]


def test_usr1_to_one_rank_stops_both_at_the_same_step_and_the_restart_is_bit_exact(shapes_dir, tmp_path):
    reference = tmp_path / "reference"
    results = wait_all(start_tasks(tiny_args(shapes_dir, reference, *ARGS), 29611))
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-3000:]

    run_dir = tmp_path / "preempted"
    procs = start_tasks(tiny_args(shapes_dir, run_dir, *ARGS), 29612)
    deadline = time.time() + 240
    while not _checkpoint_logged(run_dir, epoch=1):
        assert all(p.poll() is None for p in procs) and time.time() < deadline, "no epoch-1 checkpoint"
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGUSR1)  # one rank only: the other learns it at the next agreement
    results = wait_all(procs)
    assert [rc for rc, _ in results] == [3, 3], results[1][1][-3000:]
    assert "stopped on SIGUSR1 after step" in results[1][1]
    stopped = [e for e in read_jsonl(run_dir / "metrics.jsonl") if e["event"] == "preempted"]
    assert len(stopped) == 1 and stopped[0]["signal"] == "SIGUSR1"
    step = stopped[0]["step"]
    assert step % 2 == 0 and step < 18  # an agreement step, before the end
    assert _checkpoint_logged(run_dir, step=step)

    results = wait_all(start_tasks(tiny_args(shapes_dir, run_dir, *ARGS), 29613))
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-3000:]
    assert f"step {step}" in results[0][1]  # "resuming from ... (epoch E, step S, ...)"
    _assert_identical_continuation(reference, run_dir)
