"""Bad input to the install commands: one line naming the value and what is allowed, exit 2, nothing created."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import PYTHON, ROOT


def setup(tmp_path, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/setup.sh", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "VENV": str(tmp_path / "venv"), **env})


def assert_one_line_usage_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_setup_refuses_an_unknown_option(tmp_path):
    result = setup(tmp_path, "--check-system", "--user")
    assert_one_line_usage_error(result, "'--user'", "--dev", "--check-system")
    assert not (tmp_path / "venv").exists()


def test_setup_refuses_a_python_that_does_not_exist(tmp_path):
    result = setup(tmp_path, "--check-system", PYTHON=str(tmp_path / "python9"))
    assert_one_line_usage_error(result, f"PYTHON={tmp_path / 'python9'}", "no such interpreter", "3.10 or newer")


def test_setup_refuses_a_python_older_than_3_10(tmp_path):
    # An interpreter that reports 3.9 for the one thing setup asks it (it answers every question the same).
    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\nprintf '3.9\\n0\\ngcc\\ng++\\n/usr/include/python3.9\\n'\n")
    old.chmod(0o755)
    result = setup(tmp_path, "--check-system", PYTHON=str(old))
    assert_one_line_usage_error(result, f"PYTHON={old} is Python 3.9", "3.10 or newer")


def test_setup_dev_refuses_a_wheelhouse(tmp_path):
    result = setup(tmp_path, "--dev", WHEELHOUSE=str(tmp_path / "wheelhouse"))
    assert_one_line_usage_error(result, "--dev", "WHEELHOUSE=", "make setup WHEELHOUSE=")
    assert not (tmp_path / "venv").exists()


def test_setup_refuses_a_folder_that_is_not_a_wheelhouse(tmp_path):
    result = setup(tmp_path, WHEELHOUSE=str(tmp_path / "nowhere"))
    assert_one_line_usage_error(result, "nowhere", "not a wheelhouse", "make wheelhouse")
    assert not (tmp_path / "venv").exists()


def test_setup_refuses_a_wheelhouse_for_another_python(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "constraints.txt").write_text("")
    (wheelhouse / "wheelhouse.json").write_text(json.dumps({"python_version": "3.99"}))
    result = setup(tmp_path, WHEELHOUSE=str(wheelhouse), PYTHON=PYTHON)
    assert_one_line_usage_error(result, "for Python 3.99", "PYTHON=python3.99", "PYTHON_VERSION=3.")
    assert not (tmp_path / "venv").exists()


def test_wheelhouse_refuses_an_unsupported_python_version(tmp_path):
    for bad in ("3", "3.9", "2.7", "three"):
        result = subprocess.run([PYTHON, "scripts/wheelhouse.py", str(tmp_path / "out"), "--python-version", bad],
                                cwd=ROOT, capture_output=True, text=True)
        assert_one_line_usage_error(result, repr(bad), "3.N, N >= 10")
    assert not (tmp_path / "out").exists()


def test_wheelhouse_refuses_a_missing_have_file(tmp_path):
    result = subprocess.run([PYTHON, "scripts/wheelhouse.py", str(tmp_path / "out"), "--have", str(tmp_path / "x")],
                            cwd=ROOT, capture_output=True, text=True)
    assert_one_line_usage_error(result, "--have", "pip freeze")
    assert not (tmp_path / "out").exists()


def test_make_wheelhouse_refuses_an_unknown_torch_setting():
    result = subprocess.run(["make", "-s", "wheelhouse", "TORCH=cpu", "DIR=/nonexistent/never"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "TORCH=cpu is not understood" in result.stderr
    assert "TORCH=skip" in result.stderr


def test_wheelhouse_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    result = subprocess.run([PYTHON, "scripts/wheelhouse.py", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                            text=True)
    assert_one_line_usage_error(result, str(tmp_path / "out"), "not empty")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]


def test_wheelhouse_leaves_out_what_the_target_has_and_never_the_build_backend(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import wheelhouse
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("# the target\nNumPy==2.3.0\nopencv_python_headless==4.12.0.88\nsetuptools==70.0\n"
                      "mypkg @ file:///src/mypkg\n-e git+https://example/x#egg=x\n")
    have = wheelhouse.read_have(freeze)
    assert have == {"numpy", "opencv-python-headless", "setuptools", "mypkg"}
    torch_stack = {"torch", "nvidia-cublas", "sympy"}
    assert wheelhouse.left_out("numpy", torch_stack, have) == "the target has it (--have)"
    assert wheelhouse.left_out("sympy", torch_stack, have).startswith("torch and what it needs")
    assert wheelhouse.left_out("uv", torch_stack, have) == "build tool"
    assert wheelhouse.left_out("setuptools", torch_stack, have) is None  # the editable install builds with it
    assert wheelhouse.left_out("deepspeed", torch_stack, have) is None
