"""`make demo`'s script: generated data, 2 processes, a model far above chance."""

import os
import subprocess

import pytest

from pathlib import Path

from tests.conftest import PYTHON, ROOT, read_json

pytestmark = pytest.mark.slow


def test_demo_trains_two_processes_far_above_chance(tmp_path):
    run_dir = tmp_path / "demo-run"
    env = {**os.environ, "DEMO_DATA": str(tmp_path / "shapes"), "DEMO_RUN_DIR": str(run_dir),
           "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}"}  # as `make demo` sets it
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = read_json(run_dir / "summary.json")
    assert summary["world_size"] == 2
    assert summary["final"]["samples"] == 1000
    # Chance is 10% on 10 balanced classes; 90% on 1000 held-out images is far out of its reach.
    assert summary["final"]["top1"] >= 90.0
    assert f"demo: val top-1 {summary['final']['top1']:.1f}%" in result.stdout
