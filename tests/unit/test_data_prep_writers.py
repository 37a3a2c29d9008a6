"""python -m visiontrain prep cifar10 / imagenet / folder on real images: round trips, labels, errors."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from ffcv.reader import Reader
from PIL import Image

from tests.helpers import prep, read_beton

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def test_cifar10_from_real_jpegs_round_trips_pixel_exact_with_labels(cifar_slice, tmp_path):
    out = tmp_path / "cifar10"
    result = prep("cifar10", "--source", cifar_slice, "--out", out, "--val-fraction", "0.2", "--workers", "2")
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["class_names"] == CIFAR_CLASSES and meta["num_classes"] == 10
    assert meta["splits"]["train"]["counts"] == {c: 24 for c in CIFAR_CLASSES}  # stratified: 6 of 30 to val
    assert meta["splits"]["val"]["counts"] == {c: 6 for c in CIFAR_CLASSES}
    assert meta["splits"]["train"]["image_size"]["width"] == {"min": 32, "max": 32, "mean": 32.0}
    assert all(0.3 < m < 0.6 for m in meta["mean"]) and all(0.15 < s < 0.35 for s in meta["std"])
    assert meta["options"]["write_mode"] == "raw" and meta["writer_version"] == 1 and "stratified" in meta["source"]

    source = {}  # pixel digest -> label, from the JPEGs as PIL decodes them
    for label, name in enumerate(CIFAR_CLASSES):
        for path in (cifar_slice / "train" / name).iterdir():
            source[digest(np.asarray(Image.open(path).convert("RGB")))] = label
    seen = {}
    for split in ("train", "val"):
        images, labels = read_beton(out / f"{split}.beton")
        assert images.shape[1:] == (32, 32, 3)
        for image, label in zip(images, labels):
            seen[digest(image)] = int(label)
    assert seen == source  # raw mode: every image exactly once, bit-exact, with its folder's label
    train_pixels = read_beton(out / "train.beton")[0].reshape(-1, 3) / 255
    # 32 px images are measured whole: the statistics are exact
    np.testing.assert_allclose(meta["splits"]["train"]["mean"], train_pixels.mean(0), atol=1e-5)
    np.testing.assert_allclose(meta["splits"]["train"]["std"], train_pixels.std(0), atol=1e-5)


def test_cifar10_from_python_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    arrays = {}
    for name, n in (("data_batch_1", 30), ("test_batch", 10)):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        arrays[name] = images
        with open(root / name, "wb") as f:
            pickle.dump({"data": images.transpose(0, 3, 1, 2).reshape(n, -1), "labels": [i % 10 for i in range(n)]}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_CLASSES}, f)
    out = tmp_path / "out"
    assert prep("cifar10", "--source", tmp_path, "--out", out, "--workers", "1").returncode == 0
    images, labels = read_beton(out / "val.beton")
    assert np.array_equal(images, arrays["test_batch"]) and labels.tolist() == [i % 10 for i in range(10)]


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def imagenet_layout(imagenet_sample, tmp_path_factory) -> tuple[Path, Path, Path]:
    """train: the 200 photos by wnid; val: 20 of them as flat ILSVRC-named files + a labels file."""
    root = tmp_path_factory.mktemp("ilsvrc")
    val = root / "val"
    val.mkdir()
    lines = []
    for k, wnid_dir in enumerate(sorted(imagenet_sample.iterdir())[::10]):
        name = f"ILSVRC2012_val_{k + 1:08d}.JPEG"
        shutil.copy(next(wnid_dir.iterdir()), val / name)
        lines.append(f"{name} {wnid_dir.name}")
    (root / "val_labels.txt").write_text("\n".join(lines) + "\n")
    return imagenet_sample, val, root / "val_labels.txt"


def test_imagenet_writer_on_real_photos_with_a_flat_val_folder(imagenet_layout, tmp_path):
    train, val, labels_file = imagenet_layout
    out = tmp_path / "imagenet"
    result = prep("imagenet", "--train", train, "--val", val, "--val-labels", labels_file, "--out", out,
                  "--max-res", "160", "--write-mode", "jpg", "--jpeg-quality", "90", "--workers", "2")
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    wnids = sorted(p.name for p in train.iterdir())
    assert meta["class_names"] == wnids and meta["splits"]["train"]["samples"] == 200
    assert meta["splits"]["train"]["image_size"]["width"]["max"] > 160  # sizes of the source photos
    reader = Reader(str(out / "train.beton"))
    stored = np.maximum(reader.metadata["f0"]["width"], reader.metadata["f0"]["height"]).astype(int)
    source_files = [f for wnid in wnids for f in sorted((train / wnid).iterdir())]
    source = np.array([max(Image.open(f).size) for f in source_files])
    assert np.all(np.abs(stored - np.minimum(source, 160)) <= 1)  # --max-res caps the longer side only
    val_images, val_labels = read_beton(out / "val.beton", size=64)
    expected = [wnids.index(line.split()[1]) for line in labels_file.read_text().split("\n") if line]
    assert val_labels.tolist() == expected
    # JPEG at quality 90 after a resize: close to the source photo, not equal
    first = Image.open(next((train / wnids[0]).iterdir())).convert("RGB")
    train_images, train_labels = read_beton(out / "train.beton", size=64)
    assert train_labels[0] == 0
    reference = np.asarray(_center_square(first).resize((64, 64), Image.BILINEAR), dtype=np.float64)
    assert np.abs(train_images[0].astype(np.float64) - reference).mean() < 12
    # Sizes and colour statistics are measured by the writer's own decodes (a subsample of each photo's rows)
    pixels = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255 for f in source_files]
    assert meta["splits"]["train"]["image_size"]["width"]["max"] == max(Image.open(f).size[0] for f in source_files)
    assert meta["splits"]["train"]["image_size"]["height"]["min"] == min(Image.open(f).size[1] for f in source_files)
    every = np.concatenate(pixels)
    np.testing.assert_allclose(meta["splits"]["train"]["mean"], every.mean(0), atol=0.005)
    np.testing.assert_allclose(meta["splits"]["train"]["std"], every.std(0), atol=0.005)


def _center_square(image: Image.Image) -> Image.Image:
    w, h = image.size
    side = min(w, h)
    return image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))


def test_imagenet_val_labels_in_kaggle_csv_format(imagenet_layout, tmp_path):
    train, val, labels_file = imagenet_layout
    rows = ["ImageId,PredictionString"] + [f"{Path(f).stem},{w} 1 2 3 4" for f, w in
                                           (line.split() for line in labels_file.read_text().splitlines())]
    csv_file = tmp_path / "LOC_val_solution.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert prep("imagenet", "--train", train, "--val", val, "--val-labels", csv_file, "--out", out,
                "--max-res", "64", "--workers", "2").returncode == 0
    assert json.loads((out / "meta.json").read_text())["splits"]["val"]["samples"] == 20


def _mixed_folder(root: Path) -> Path:
    """Two classes of images in awkward formats: grayscale, CMYK, palette PNG, RGBA PNG."""
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        base = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(base).save(root / cls / "rgb.jpg", quality=95)
        Image.fromarray(base).convert("L").save(root / cls / "gray.png")
        Image.fromarray(base).convert("CMYK").save(root / cls / "cmyk.jpg", quality=95)
        Image.fromarray(base).convert("P").save(root / cls / "palette.png")
        Image.fromarray(np.dstack([base, np.full((20, 24), 128, np.uint8)]), "RGBA").save(root / cls / "alpha.png")
    return root


def test_folder_converts_every_image_mode_to_rgb_exactly_as_pil_does(tmp_path):
    train = _mixed_folder(tmp_path / "train")
    val = _mixed_folder(tmp_path / "val")
    out = tmp_path / "out"
    result = prep("folder", "--train", train, "--val", val, "--out", out, "--write-mode", "raw", "--workers", "1")
    assert result.returncode == 0, result.stderr
    images, labels = read_beton(out / "train.beton")
    files = sorted((train / "a").iterdir()) + sorted((train / "b").iterdir())
    assert labels.tolist() == [0] * 5 + [1] * 5
    for image, path in zip(images, files):
        assert np.array_equal(image, np.asarray(Image.open(path).convert("RGB"))), path.name


def test_folder_stratified_split_is_seeded(cifar_slice, tmp_path):
    from visiontrain.data.prep.sources import stratified_split
    from visiontrain.data.sources import class_folders

    samples = class_folders(cifar_slice / "train")
    val_sets = [set(map(str, stratified_split(samples, 0.1, seed)[1].paths)) for seed in (3, 3, 4)]
    assert len(val_sets[0]) == 30 and val_sets[0] == val_sets[1] and val_sets[0] != val_sets[2]
    out = tmp_path / "out"  # and the writer uses exactly that split
    assert prep("folder", "--train", cifar_slice / "train", "--val-fraction", "0.1", "--seed", 3,
                "--out", out, "--write-mode", "raw", "--workers", "1").returncode == 0
    written = sorted(digest(i) for i in read_beton(out / "val.beton")[0])
    assert written == sorted(digest(np.asarray(Image.open(p).convert("RGB"))) for p in val_sets[0])


def test_on_bad_skip_leaves_bad_files_out_and_counts_them(folder_with_bad_files, tmp_path):
    out = tmp_path / "out"
    result = prep("folder", "--train", folder_with_bad_files, "--val-fraction", "0.1", "--out", out,
                  "--on-bad", "skip", "--workers", "2")
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    splits = meta["splits"]
    assert splits["train"]["skipped"] + splits["val"]["skipped"] == 2
    assert splits["train"]["samples"] + splits["val"]["samples"] == 300 - 1  # the text file was never a sample
    assert "skipped 2 bad files" in result.stdout


@pytest.mark.parametrize("case, expected", [
    ("missing", "is not a directory"),
    ("empty_class", "class folder"),
    ("no_classes", "has no class folders"),
    ("class_mismatch", "class names differ between train and"),
])
def test_bad_layouts_exit_2_with_one_line(tmp_path, case, expected):
    train, val = tmp_path / "train", tmp_path / "val"
    if case != "missing":
        train.mkdir()
    if case in ("empty_class", "class_mismatch"):
        (train / "a").mkdir()
        Image.new("RGB", (8, 8)).save(train / "a" / "x.png")
        (train / "b").mkdir()
    if case == "class_mismatch":
        Image.new("RGB", (8, 8)).save(train / "b" / "x.png")
        (val / "a").mkdir(parents=True)
        (val / "c").mkdir()
        Image.new("RGB", (8, 8)).save(val / "a" / "x.png")
        Image.new("RGB", (8, 8)).save(val / "c" / "x.png")
    args = ["folder", "--train", train, "--out", tmp_path / "out"]
    args += ["--val", val] if case == "class_mismatch" else ["--val-fraction", "0.5"]
    result = prep(*args)
    assert result.returncode == 2 and expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_without_force(cifar_slice, tmp_path):
    out = tmp_path / "out"
    args = ["folder", "--train", cifar_slice / "train", "--val-fraction", "0.1", "--out", out, "--workers", "1"]
    assert prep(*args).returncode == 0
    stamp = (out / "meta.json").stat().st_mtime_ns
    refused = prep(*args)
    assert refused.returncode == 2 and "already exists; pass --force" in refused.stderr
    assert (out / "meta.json").stat().st_mtime_ns == stamp
    assert prep(*args, "--force").returncode == 0 and (out / "meta.json").stat().st_mtime_ns != stamp


def test_a_crash_while_writing_leaves_no_output(cifar_slice, tmp_path, monkeypatch):
    import visiontrain.data.prep.beton as beton
    import visiontrain.data.prep.cli as cli

    real = beton.write_beton

    def crash_after_train(samples, out_file, options, **kwargs):
        real(samples, out_file, options, **kwargs)
        raise KeyboardInterrupt  # e.g. Ctrl-C after train.beton was written

    monkeypatch.setattr(beton, "write_beton", crash_after_train)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        cli.main(["folder", "--train", str(cifar_slice / "train"), "--val-fraction", "0.1", "--out", str(out),
                  "--workers", "1"])
    assert list(tmp_path.iterdir()) == []


def test_a_writer_worker_records_a_long_non_ascii_reason_without_dying(tmp_path):
    from visiontrain.data.prep.beton import _WriterDataset
    from visiontrain.data.sources import Samples

    folder = tmp_path / ("画像" * 20) / ("画像" * 20)  # PIL's message names the file: over 300 bytes in UTF-8
    folder.mkdir(parents=True)
    bad = folder / ("画像" * 20 + ".jpg")
    bad.write_bytes(b"not an image")
    dataset = _WriterDataset(Samples(["a"], [0], [bad]), measure=True)
    image, label = dataset[0]
    assert image.shape == (8, 8, 3) and label == 0 and dataset.failed.value == 0
    assert dataset.reason.value.decode(errors="replace").startswith("UnidentifiedImageError")


@pytest.mark.parametrize("forked", [True, False])
def test_val_is_written_first_and_files_are_scanned_only_where_workers_cannot_share_measurements(
        cifar_slice, tmp_path, monkeypatch, forked):
    import visiontrain.data.prep.beton as beton
    import visiontrain.data.prep.cli as cli

    calls, real_write, real_scan = [], beton.write_beton, beton.scan

    def write(samples, out_file, options, measure=False):
        calls.append((out_file.name, measure))
        return real_write(samples, out_file, options, measure=measure)

    def scan(samples, workers, on_bad, split):
        calls.append(("scan", split))
        return real_scan(samples, workers, on_bad, split)

    monkeypatch.setattr(beton, "write_beton", write)
    monkeypatch.setattr(beton, "scan", scan)
    monkeypatch.setattr(beton, "can_measure_while_writing", lambda: forked)
    out = tmp_path / "out"
    assert cli.main(["folder", "--train", str(cifar_slice / "train"), "--val-fraction", "0.1", "--out", str(out),
                     "--workers", "1"]) == 0
    if forked:
        assert calls == [("val.beton", True), ("train.beton", True)]
    else:
        assert calls == [("scan", "val"), ("val.beton", False), ("scan", "train"), ("train.beton", False)]
    assert json.loads((out / "meta.json").read_text())["splits"]["train"]["samples"] == 270
