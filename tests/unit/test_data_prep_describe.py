"""`python -m visiontrain prep describe`: meta.json for .beton files written by FFCV's own scripts (training on
them: tests/integration/test_train_loaders.py).

The betons here are written the way ffcv-imagenet's `write_imagenet.py` and FFCV's CIFAR example
`write_datasets.py` write theirs: `DatasetWriter(path, {"image": RGBImageField(...), "label": IntField()})`
fed by a torchvision ImageFolder (or a list of (pixels, label) pairs). The converse, data_prep's betons read
by FFCV's documented pipeline (SimpleRGBImageDecoder + IntDecoder, a plain Loader) pixel for pixel, is tested
in test_data_prep_writers.py through `read_beton`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from ffcv.reader import Reader
from torchvision.datasets import ImageFolder

from tests.helpers import ffcv_write, prep, read_json
from visiontrain.data.prep.synthetic import SHAPES

SHAPE_NAMES = sorted(SHAPES)  # the shapes data set's labels follow its sorted class names


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def ffcv_betons(shapes_dir, tmp_path_factory) -> Path:
    """The shapes images (10 classes, 40 train + 11 val each, 16x16) as raw betons written by FFCV's writer."""
    out = tmp_path_factory.mktemp("ffcv_written")
    for split in ("train", "val"):
        ffcv_write(out / f"{split}.beton", ImageFolder(str(shapes_dir / split)))
    return out


def beton_dir(source: Path, into: Path) -> Path:
    """A directory holding (hard links to) the two betons of `source`, and nothing else."""
    into.mkdir()
    for split in ("train", "val"):
        os.link(source / f"{split}.beton", into / f"{split}.beton")
    return into


def refused(result, *expected: str) -> str:
    """Exit code 2 and one line `error: ...` containing every expected fragment; returns the line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_unnamed_classes_are_numbered_and_every_label_is_counted(ffcv_betons, shapes_dir, tmp_path):
    data = beton_dir(ffcv_betons, tmp_path / "data")
    result = prep("describe", "--beton", data)
    assert result.returncode == 0, result.stderr
    meta = read_json(data / "meta.json")
    numbered = [str(i) for i in range(10)]
    assert meta["class_names"] == numbered and meta["num_classes"] == 10 and meta["writer_version"] == 1
    for split, per_class in (("train", 40), ("val", 11)):
        s = meta["splits"][split]
        assert s["samples"] == 10 * per_class and s["counts"] == {name: per_class for name in numbered}
        assert s["image_size"] == {"width": {"min": 16, "max": 16, "mean": 16.0},
                                   "height": {"min": 16, "max": 16, "mean": 16.0}}
        assert s["stored"] == {"raw": 10 * per_class, "jpg": 0} and s["decoded"] == 10 * per_class
        assert s["skipped"] == 0 and s["skipped_files"] == []
    assert meta["options"]["write_mode"] == "raw" and meta["options"]["class_names"] == "numbered"
    # Every pixel decoded (fewer than --sample): the statistics equal data_prep's from the source PNGs.
    written_by_data_prep = read_json(shapes_dir / "meta.json")
    assert meta["mean"] == pytest.approx(written_by_data_prep["mean"], abs=1e-5)
    assert meta["std"] == pytest.approx(written_by_data_prep["std"], abs=1e-5)
    assert f"wrote {data / 'meta.json'}" in result.stdout and "numbered 0-9" in result.stdout
    assert (f"python train.py -c configs/cifar10/resnet18.yaml data.path={data} data.loader=ffcv "
            "model.num_classes=10 data.image_size=16 data.val_image_size=16") in result.stdout
    assert [p.name for p in data.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


@pytest.mark.parametrize("writer", ["ffcv", "data_prep"])
@pytest.mark.parametrize("names_as", ["file", "list"])
def test_given_class_names_give_the_meta_json_data_prep_writes(ffcv_betons, shapes_dir, tmp_path, writer, names_as):
    """Described with their class names, betons of the shapes images (written by FFCV's writer, or by data_prep
    itself) get the class list, counts, sizes and statistics that data_prep's own meta.json has."""
    data = beton_dir(ffcv_betons if writer == "ffcv" else shapes_dir, tmp_path / "data")
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(SHAPE_NAMES) + "\n\n")  # a trailing blank line is no class
    names = names_file if names_as == "file" else ",".join(SHAPE_NAMES)
    result = prep("describe", "--beton", data, "--class-names", names)
    assert result.returncode == 0, result.stderr
    meta, reference = read_json(data / "meta.json"), read_json(shapes_dir / "meta.json")
    assert meta["class_names"] == reference["class_names"] == SHAPE_NAMES and meta["num_classes"] == 10
    assert meta["mean"] == pytest.approx(reference["mean"], abs=1e-5)
    assert meta["std"] == pytest.approx(reference["std"], abs=1e-5)
    for split in ("train", "val"):
        ours, theirs = meta["splits"][split], reference["splits"][split]
        for key in ("samples", "counts", "image_size", "skipped", "skipped_files"):
            assert ours[key] == theirs[key], (split, key)
        assert ours["mean"] == pytest.approx(theirs["mean"], abs=1e-5)
        assert ours["std"] == pytest.approx(theirs["std"], abs=1e-5)
    assert meta["options"]["class_names"] == "given" and "model.num_classes=10" in result.stdout


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def imagenet_betons(imagenet_sample, tmp_path_factory) -> tuple[Path, list[str]]:
    """20 real ImageNet photos written as ffcv-imagenet's write_imagenet.py writes them: some raw, some JPEG
    (`proportion`), longer side capped; train: all 20, val: the first 10 classes."""
    root = tmp_path_factory.mktemp("imagenet_ffcv")
    wnids = sorted(p.name for p in imagenet_sample.iterdir())[:20]
    for split, kept in (("train", wnids), ("val", wnids[:10])):
        for wnid in kept:
            (root / "folders" / split / wnid).mkdir(parents=True)
            for photo in (imagenet_sample / wnid).iterdir():
                os.symlink(photo, root / "folders" / split / wnid / photo.name)
    out = root / "betons"
    out.mkdir()
    for split in ("train", "val"):
        ffcv_write(out / f"{split}.beton", ImageFolder(str(root / "folders" / split)), write_mode="proportion",
                   max_resolution=64, compress_probability=0.5, jpeg_quality=90)
    return out, wnids


def test_jpeg_and_raw_images_of_many_sizes(imagenet_betons, tmp_path):
    source, wnids = imagenet_betons
    data = beton_dir(source, tmp_path / "data")
    (tmp_path / "wnids.txt").write_text("\n".join(wnids) + "\n")
    result = prep("describe", "--beton", data, "--class-names", tmp_path / "wnids.txt", "--sample", "8")
    assert result.returncode == 0, result.stderr
    meta = read_json(data / "meta.json")
    assert meta["class_names"] == wnids and meta["num_classes"] == 20
    assert meta["splits"]["val"]["counts"] == {w: int(i < 10) for i, w in enumerate(wnids)}  # absent classes: 0
    train = meta["splits"]["train"]
    assert train["samples"] == 20 and train["decoded"] == 8
    assert train["stored"]["raw"] + train["stored"]["jpg"] == 20 and min(train["stored"].values()) > 0
    assert meta["options"]["write_mode"] == "raw+jpg"
    stored = Reader(str(data / "train.beton")).metadata["f0"]  # the sizes as FFCV recorded them
    assert train["image_size"]["width"] == {"min": int(stored["width"].min()), "max": int(stored["width"].max()),
                                            "mean": round(float(stored["width"].mean()), 1)}
    assert max(train["image_size"]["width"]["max"], train["image_size"]["height"]["max"]) == 64
    assert all(0.2 < m < 0.7 for m in meta["mean"]) and all(0.1 < s < 0.4 for s in meta["std"])
    assert (f"python train.py -c configs/imagenet/resnet50.yaml data.path={data} data.loader=ffcv "
            "model.num_classes=20") in result.stdout


# Bad input: one line, exit code 2, nothing written.


def test_missing_directory_and_missing_beton(ffcv_betons, tmp_path):
    refused(prep("describe", "--beton", tmp_path / "nowhere"), f"--beton {tmp_path / 'nowhere'}",
            "is not a directory")
    data = tmp_path / "half"
    data.mkdir()
    os.link(ffcv_betons / "train.beton", data / "train.beton")
    refused(prep("describe", "--beton", data), f"no val.beton in --beton {data}", "train.beton and val.beton")
    assert sorted(p.name for p in data.iterdir()) == ["train.beton"]


def test_a_beton_without_image_and_label_fields_is_named_with_its_fields(shapes_dir, ffcv_betons, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    os.link(ffcv_betons / "train.beton", data / "train.beton")
    ffcv_write(data / "val.beton", ImageFolder(str(shapes_dir / "val")), image_name="img", label_name="target")
    refused(prep("describe", "--beton", data), str(data / "val.beton"), "fields: img (RGBImageField), "
            "target (IntField)", "'image' (RGBImageField) then 'label' (IntField)")
    assert not (data / "meta.json").exists()


def test_labels_beyond_the_given_class_names(ffcv_betons, tmp_path):
    data = beton_dir(ffcv_betons, tmp_path / "data")
    refused(prep("describe", "--beton", data, "--class-names", "a,b,c"), str(data / "train.beton"),
            "labels up to 9", "--class-names gives 3 names", "labels 0-2")
    assert not (data / "meta.json").exists()


@pytest.mark.parametrize("labels, expected", [
    ([0, 1, -1, 1], "has a negative label (-1); labels count classes from 0"),
    ([0, 0, 0, 0], "is 0: a classifier needs at least 2 classes"),
])
def test_labels_that_are_no_class_indices(tmp_path, labels, expected):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val"):
        ffcv_write(data / f"{split}.beton", [(np.zeros((8, 8, 3), np.uint8), label) for label in labels])
    refused(prep("describe", "--beton", data), expected)
    assert not (data / "meta.json").exists()


@pytest.mark.parametrize("names, expected", [
    ("missing.txt", "--class-names missing.txt: no such file"),
    ("a,b,a", "'a' twice"),
    ("a,,b", "name 2 is empty"),
    ("file:a\n\nb\n", "names.txt: name 2 is empty"),  # a blank line would shift every later label
    ("file:only\n\n", "1 name; give at least 2"),
])
def test_bad_class_name_lists(ffcv_betons, tmp_path, names, expected):
    data = beton_dir(ffcv_betons, tmp_path / "data")
    if names.startswith("file:"):
        (tmp_path / "names.txt").write_text(names[len("file:"):])
        names = str(tmp_path / "names.txt")
    refused(prep("describe", "--beton", data, "--class-names", names), expected)
    assert not (data / "meta.json").exists()


def test_an_existing_meta_json_is_kept_without_force(ffcv_betons, tmp_path):
    data = beton_dir(ffcv_betons, tmp_path / "data")
    assert prep("describe", "--beton", data).returncode == 0
    before = (data / "meta.json").read_bytes()
    refused(prep("describe", "--beton", data, "--class-names", ",".join(SHAPE_NAMES)),
            f"{data / 'meta.json'} already exists", "--force")
    assert (data / "meta.json").read_bytes() == before
    assert prep("describe", "--beton", data, "--class-names", ",".join(SHAPE_NAMES), "--force").returncode == 0
    assert json.loads((data / "meta.json").read_text())["class_names"] == SHAPE_NAMES


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def _damaged_jpeg(path: Path) -> None:
    """Overwrite the middle of one stored JPEG (the tables stay intact: only decoding finds it)."""
    reader = Reader(str(path))
    images = reader.metadata["f0"]
    index = int(np.flatnonzero(images["mode"] == 0)[0])
    ptr = int(images["data_ptr"][index])
    size = int(reader.alloc_table["size"][reader.alloc_table["ptr"] == ptr][0])
    with open(path, "r+b") as f:
        f.seek(ptr + 2)  # after the JPEG start marker
        f.write(b"\0" * (size - 4))


@pytest.mark.parametrize("damage, expected", [
    (_truncated, "is truncated or damaged"),
    (_garbage, "is not a readable .beton file"),
    (_damaged_jpeg, "does not decode"),
])
def test_a_damaged_beton(imagenet_betons, tmp_path, damage, expected):
    source, _ = imagenet_betons
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val"):
        shutil.copy(source / f"{split}.beton", data / f"{split}.beton")
    damage(data / "train.beton")
    refused(prep("describe", "--beton", data), str(data / "train.beton"), expected)
    assert not (data / "meta.json").exists()


def test_sample_must_be_positive(ffcv_betons, tmp_path):
    data = beton_dir(ffcv_betons, tmp_path / "data")
    refused(prep("describe", "--beton", data, "--sample", "0"), "--sample 0", ">= 1")
    assert not (data / "meta.json").exists()
