"""Which files of a class-per-folder dataset are samples: the one listing the loaders and the writers share."""

from __future__ import annotations

import pytest

from visiontrain.data.sources import class_folders
from visiontrain.infra.errors import UsageError


def test_every_visible_file_is_a_sample_also_through_symlinked_folders(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "more").mkdir(parents=True)
    (elsewhere / "more" / "c.jpg").write_bytes(b"x")
    root = tmp_path / "train"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        (root / name / "a.jpg").write_bytes(b"x")
    (root / "cat" / ".hidden.jpg").write_bytes(b"x")
    (root / "cat" / ".ipynb_checkpoints").mkdir()
    (root / "cat" / ".ipynb_checkpoints" / "b.jpg").write_bytes(b"x")
    (root / "dog" / "linked").symlink_to(elsewhere / "more", target_is_directory=True)
    (root / ".trash").mkdir()
    samples = class_folders(root)
    assert samples.class_names == ["cat", "dog"]
    assert [p.relative_to(root).as_posix() for p in samples.paths] == ["cat/a.jpg", "dog/a.jpg", "dog/linked/c.jpg"]
    assert samples.labels == [0, 1, 1]


def test_an_empty_class_folder_is_one_line_naming_it(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "a.jpg").write_bytes(b"x")
    with pytest.raises(UsageError, match=f"class folder {tmp_path / 'cat'} is empty"):
        class_folders(tmp_path)
