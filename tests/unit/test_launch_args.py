"""python -m visiontrain launch refuses bad input before submitting anything: one line, exit code 2."""

from __future__ import annotations

import pytest
import torch

from visiontrain.infra.errors import run_cli
from visiontrain.launch.cli import _slug
from visiontrain.launch.cli import main as launch_main


@pytest.mark.parametrize("argv, message", [
    (["submit", "--cluster", "kubernetes"], "--cluster 'kubernetes' is not one of slurm, local, debug"),
    (["submit", "-c", "configs/missing.yaml", "--cluster", "local"], "configs/missing.yaml"),
    (["submit", "optim.lrr=0.1", "--cluster", "local"], "optim.lrr"),
    (["submit", "--cluster", "local", "--nodes", "2"], "--nodes 2 needs --cluster slurm"),
    (["submit", "--cluster", "local", "--gpus-per-node", "2", "--tasks-per-node", "1"], "one task per GPU"),
    (["submit", "--cluster", "debug", "--tasks-per-node", "2"], "--cluster debug runs one task"),
    (["submit", "--cluster", "local", "--sweep", "optim.lr"], "not of the form"),
    (["submit", "--cluster", "local", "--time", "0"], "--time 0"),
    (["pipeline", "--pretrain", "configs/demo/train.yaml", "--finetune", "configs/demo/train.yaml",
      "--cluster", "local"], "share run.dir"),
    (["pipeline", "--pretrain", "configs/demo/train.yaml", "--finetune", "configs/demo/train.yaml",
      "finetune:run.dir=runs/other", "--cluster", "local", "--no-wait"], "--no-wait needs --cluster slurm"),
])
def test_bad_launch_input_is_one_line_exit_2(argv, message, capsys):
    assert run_cli(launch_main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_gpus_on_a_node_without_them_are_refused(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert run_cli(launch_main, ["submit", "--cluster", "local", "--gpus-per-node", "1"]) == 2
    assert "asks for more GPUs than this machine has (0)" in capsys.readouterr().err


def test_sweep_run_directories_are_named_after_their_values():
    assert _slug("optim.lr=0.1 model.name=resnet9") == "optim.lr-0.1_model.name-resnet9"
    assert _slug("data.path=/a b") == "data.path-_a_b"
