"""The command styles: `python -m visiontrain SUB`, and the one-release `python -m data_prep` / `python -m launch`,
print the same usage as the subcommands they stand for."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import PYTHON, ROOT


def usage(*module_and_args: str) -> str:
    result = subprocess.run([PYTHON, "-m", *module_and_args, "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(("old", "new"), [("data_prep", "prep"), ("launch", "launch")])
def test_the_old_commands_still_work_for_one_release(old, new):
    assert usage(old) == usage("visiontrain", new)


def test_the_dataset_writers_command_starts_without_torch():
    # `visiontrain prep synthetic/folder/describe` on a login node should not pay for torch's import.
    code = "import sys, visiontrain.data.prep.cli; sys.exit('torch' in sys.modules)"
    result = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr or "torch was imported"
