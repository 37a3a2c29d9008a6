import json
import os
import stat

import pytest

from visiontrain.infra import fileio
from visiontrain.infra.errors import UsageError


class Boom(Exception):
    pass


def _stat_mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """os.umask, restored after the test."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def test_a_writer_failing_mid_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("previous")
    with pytest.raises(Boom):
        with fileio.atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp != target
            with open(tmp, "w") as f:
                f.write("half a fi")
            raise Boom
    assert target.read_text() == "previous"
    assert os.listdir(tmp_path) == ["summary.json"]


def test_a_failure_before_the_first_byte_leaves_nothing_behind(tmp_path):
    with pytest.raises(Boom):
        with fileio.atomic_path(tmp_path / "weights.safetensors"):
            raise Boom
    assert os.listdir(tmp_path) == []


def test_the_temporary_keeps_the_suffix_and_is_unique(tmp_path):
    final = tmp_path / "curves.png"
    with fileio.atomic_path(final) as first, fileio.atomic_path(final) as second:
        assert first.suffix == second.suffix == ".png"  # matplotlib picks the format from it
        assert first != second and first.name.startswith(".")
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert final.read_bytes() == b"1" and os.listdir(tmp_path) == ["curves.png"]


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_permissions_follow_the_umask_even_for_writers_that_create_private_files(tmp_path, umask, mask, expected):
    umask(mask)
    target = tmp_path / "w.safetensors"
    with fileio.atomic_path(target) as tmp:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))  # as safetensors does
    assert _stat_mode(target) == expected
    fileio.write_text(tmp_path / "a.txt", "x")
    assert _stat_mode(tmp_path / "a.txt") == expected


def test_write_json_round_trips_with_indent_and_a_trailing_newline(tmp_path):
    obj = {"top1": 93.25, "name": "résumé", "ranks": [{"rank": 0, "ok": True}], "none": None}
    path = tmp_path / "eval.json"
    fileio.write_json(path, obj)
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(obj, indent=2) + "\n"
    assert fileio.read_json(path, "report") == obj == json.loads(text)


def test_write_json_of_an_unserializable_object_keeps_the_previous_file(tmp_path):
    path = tmp_path / "summary.json"
    fileio.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        fileio.write_json(path, {"a": object()})
    assert fileio.read_json(path, "summary") == {"a": 1} and os.listdir(tmp_path) == ["summary.json"]


def test_read_json_names_the_file_and_what_it_is(tmp_path):
    missing = tmp_path / "meta.json"
    with pytest.raises(fileio.UnreadableFile, match=f"dataset meta {missing} does not exist"):
        fileio.read_json(missing, "dataset meta")
    broken = tmp_path / "visiontrain.json"
    broken.write_text('{"step": 3')
    with pytest.raises(UsageError, match=f"checkpoint manifest {broken} is not valid JSON"):
        fileio.read_json(broken, "checkpoint manifest")


def test_link_gives_a_second_name_replacing_the_old_file(tmp_path):
    step, best = tmp_path / "step_2.pt", tmp_path / "best.pt"
    best.write_text("old best")
    step.write_text("new")
    fileio.link(step, best)
    assert best.read_text() == "new" and os.path.samefile(step, best)
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "step_2.pt"]


def test_atomic_dir_swaps_a_whole_directory_or_leaves_the_old_one(tmp_path, umask):
    umask(0o022)
    out = tmp_path / "shapes"
    with fileio.atomic_dir(out) as tmp:
        assert _stat_mode(tmp) == 0o755
        (tmp / "meta.json").write_text("v1")
    with pytest.raises(Boom):
        with fileio.atomic_dir(out) as tmp:
            (tmp / "meta.json").write_text("v2, half")
            raise Boom
    assert (out / "meta.json").read_text() == "v1" and os.listdir(tmp_path) == ["shapes"]
    with fileio.atomic_dir(out) as tmp:
        (tmp / "other.json").write_text("v3")
    assert os.listdir(out) == ["other.json"] and os.listdir(tmp_path) == ["shapes"]


def test_replace_dir_over_a_missing_target(tmp_path):
    src = tmp_path / ".step_5.tmp"
    src.mkdir()
    (src / "a").write_text("a")
    fileio.replace_dir(src, tmp_path / "step_5")
    assert os.listdir(tmp_path) == ["step_5"] and (tmp_path / "step_5" / "a").read_text() == "a"


def test_the_holder_of_a_run_directory_owns_its_temporaries_whatever_pid_they_name(tmp_path):
    """Under the writer lock a pid in a temporary's name says nothing (it may be another node's): removed, unless
    it is a fresh one of another live process here (an export writing into the run directory)."""
    import subprocess
    import sys
    import time

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        old = tmp_path / f".weights.{live.pid}-0123abcd.tmp.safetensors"
        fresh = tmp_path / f".config.{live.pid}-4567cdef.tmp.yaml"
        own = tmp_path / f".metrics.{os.getpid()}-89abcdef.tmp.jsonl"
        for path in (old, fresh, own):
            path.write_text("half")
        os.utime(old, (time.time() - 120, time.time() - 120))
        assert fileio.clean_leftovers(tmp_path) == []  # by pid alone: every writer is alive
        assert sorted(fileio.clean_leftovers(tmp_path, owned=True)) == sorted([old.name, own.name])
        assert fresh.exists()
    finally:
        live.kill()
        live.wait()
