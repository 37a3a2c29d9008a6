"""python -m visiontrain prep as its own process, where the process's exit code is the subject: a bad image found
by a writer worker ends the whole command with exit code 2 and one line, leaving nothing."""

from __future__ import annotations

import subprocess

from tests.helpers import PYTHON, ROOT


def prep_process(*args) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "visiontrain", "prep", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_a_bad_image_stops_the_writer_naming_it_and_leaves_nothing(folder_with_bad_files, tmp_path):
    out = tmp_path / "out"
    result = prep_process("folder", "--train", folder_with_bad_files, "--val-fraction", "0.1", "--out", out,
                          "--workers", "2")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: bad image ") and ("cat/0003.jpg" in last or "dog/notes.txt" in last)
    assert "--on-bad skip" in last
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["data"]
