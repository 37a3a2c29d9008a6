import json
import subprocess

import numpy as np
from PIL import Image

from tests import helpers
from visiontrain.data.prep.synthetic import SHAPES, render


def prep(*args: str) -> subprocess.CompletedProcess:
    """`python -m visiontrain prep synthetic ARGS`, in this process: the same exit code, stdout and stderr."""
    return helpers.prep("synthetic", *args)


def test_writes_class_folders_with_the_requested_counts_and_meta(tmp_path):
    out = tmp_path / "shapes"
    result = prep("--out", str(out), "--train-per-class", "3", "--val-per-class", "2", "--size", "24",
                  "--classes", "circle,star,bar")
    assert result.returncode == 0, result.stderr
    for split, count in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (out / split).iterdir()) == ["bar", "circle", "star"]
        files = sorted((out / split / "star").iterdir())
        assert len(files) == count and Image.open(files[0]).size == (24, 24) and Image.open(files[0]).mode == "RGB"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["class_names"] == ["bar", "circle", "star"]  # label order: sorted, as ImageFolder numbers them
    assert meta["counts"]["val"]["bar"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # no temp dirs left behind


def test_output_is_reproducible_from_the_seed_and_splits_differ(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for out, seed in ((a, "1"), (b, "1"), (c, "2")):
        assert prep("--out", str(out), "--train-per-class", "2", "--val-per-class", "2", "--seed", seed).returncode == 0
    image = "train/ring/00001.png"
    assert (a / image).read_bytes() == (b / image).read_bytes()
    assert (a / image).read_bytes() != (c / image).read_bytes()
    assert (a / "train/ring/00000.png").read_bytes() != (a / "val/ring/00000.png").read_bytes()


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "shapes"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = prep("--out", str(out))
    assert result.returncode == 2 and "already exists; pass --force" in result.stderr
    assert (out / "mine.txt").read_text() == "keep"
    assert prep("--out", str(out), "--force", "--train-per-class", "1", "--val-per-class", "1").returncode == 0
    assert not (out / "mine.txt").exists() and (out / "meta.json").is_file()


def test_bad_class_names_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "shapes"
    result = prep("--out", str(out), "--classes", "circle,hexagon")
    assert result.returncode == 2 and "hexagon" not in SHAPES and "'circle,hexagon'" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_every_shape_draws_a_visible_foreground():
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        pixels = np.asarray(render(shape, 32, rng), dtype=np.float32)
        assert pixels.shape == (32, 32, 3) and pixels.std() > 10
