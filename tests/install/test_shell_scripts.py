"""The shell scripts (scripts/*.sh, slurm/*.sh, .ci/run) on the bash of older clusters, and slurm/common.sh's
run directory when it is given twice. No SLURM needed: srun and scontrol are stand-ins that record their call."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import PYTHON, ROOT
from visiontrain.config import load_config

SHELL_SCRIPTS = sorted([*ROOT.glob("scripts/*.sh"), *ROOT.glob("slurm/*.sh"), ROOT / ".ci" / "run"])
# Under `set -u`, bash before 4.4 (RHEL/CentOS 7 ship 4.2) calls an empty array unbound: "${a[@]}" and
# ${a[*]} stop the script. The forms that work on every bash: ${a[@]+"${a[@]}"} and ${a[*]:-...}.
SAFE_ARRAY = re.compile(r'\$\{(\w+)\[@\]\+"\$\{\1\[@\]\}"\}|\$\{\w+\[\*\]:-[^}]*\}')
ARRAY = re.compile(r"\$\{!?\w+\[[@*]\]")  # not ${#a[@]}, which every bash counts as 0
# Features of bash 4.3 and later.
NEWER_BASH = re.compile(r"\b(local|declare|typeset) -n\b|\bwait -n\b|\b(mapfile|readarray) -d\b|\$\{\w+@[QEPAaKk]\}|"
                        r"\$EPOCH(SECONDS|REALTIME)|\$\{EPOCH")


def test_scripts_expand_arrays_and_use_only_what_bash_4_2_has():
    assert len(SHELL_SCRIPTS) >= 10, SHELL_SCRIPTS
    found = []
    for script in SHELL_SCRIPTS:
        for number, line in enumerate(script.read_text().splitlines(), 1):
            if ARRAY.search(SAFE_ARRAY.sub("", line)) or NEWER_BASH.search(line):
                found.append(f"{script.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_check_finds_an_unsafe_expansion():
    assert ARRAY.search(SAFE_ARRAY.sub("", 'srun "${args[@]}" x'))
    assert ARRAY.search(SAFE_ARRAY.sub("", "echo ${args[*]}"))
    assert not ARRAY.search(SAFE_ARRAY.sub("", 'srun ${args[@]+"${args[@]}"} "${#args[@]}" ${args[*]:-}'))


def fake_slurm(folder: Path) -> None:
    """srun that records its arguments (one a line) in $SRUN_ARGS; scontrol that names one node."""
    folder.mkdir()
    (folder / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    (folder / "scontrol").write_text("#!/bin/sh\necho node1\n")
    for name in ("srun", "scontrol"):
        (folder / name).chmod(0o755)


@pytest.mark.slow  # the script validates the config in a Python process of its own
def test_run_dir_given_as_argument_and_as_run_dir_sends_log_and_training_to_one_directory(tmp_path):
    fake_slurm(tmp_path / "bin")
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env.update({"PATH": os.pathsep.join([str(tmp_path / "bin"), str(Path(PYTHON).parent), env["PATH"]]),
                "SLURM_JOB_ID": "41", "SLURM_JOB_NODELIST": "node1", "VISIONTRAIN_ROOT": str(ROOT),
                "VISIONTRAIN_VENV": "none", "RUN_DIR": str(tmp_path / "from-env"),
                "SRUN_ARGS": str(tmp_path / "srun-args")})
    result = subprocess.run(["bash", "slurm/finetune.sh", "configs/demo/train.yaml",
                             f"run.dir={tmp_path / 'from-argument'}", "train.epochs=3"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    argv = (tmp_path / "srun-args").read_text().splitlines()
    at = argv.index("-c")
    assert argv[:at] == ["--export=ALL", "python", "train.py"]
    # train.py reads its arguments as the script's own check did: the last run.dir= wins.
    trained_in = Path(load_config(ROOT / argv[at + 1], argv[at + 2:]).run.dir)
    assert trained_in == tmp_path / "from-env", "RUN_DIR, as documented in slurm/common.sh"
    assert [log.parent for log in tmp_path.rglob("slurm-41.log")] == [trained_in]
    assert "train.epochs=3" in argv


def test_pipeline_submits_with_empty_settings_lists(tmp_path):
    """PIPELINE's *_OVERRIDES and SBATCH_ARGS unset: two jobs, the second after the first."""
    (tmp_path / "bin").mkdir()
    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.write_text('#!/bin/sh\necho "$*" >> "$SBATCH_CALLS"\necho "$(wc -l < "$SBATCH_CALLS");cluster"\n')
    sbatch.chmod(0o755)
    env = {key: value for key, value in os.environ.items()
           if key not in ("SBATCH_ARGS", "PRETRAIN_OVERRIDES", "FINETUNE_OVERRIDES")}
    env.update({"PATH": f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}", "VISIONTRAIN_ROOT": str(ROOT),
                "PIPELINE_DIR": str(tmp_path / "p"), "SBATCH_CALLS": str(tmp_path / "calls")})
    result = subprocess.run(["bash", "slurm/pipeline.sh", "configs/demo/train.yaml", "configs/demo/train.yaml"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    first, second = (tmp_path / "calls").read_text().splitlines()
    assert first == "--parsable slurm/pretrain.sh configs/demo/train.yaml"
    assert second == (f"--parsable --dependency=afterok:1 --kill-on-invalid-dep=yes slurm/finetune.sh "
                      f"configs/demo/train.yaml finetune.init_from={tmp_path / 'p'}/pretrain")
    assert "pretrain: job 1" in result.stdout and "finetune: job 2" in result.stdout
