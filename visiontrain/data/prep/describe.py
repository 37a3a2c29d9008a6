"""meta.json for .beton files written by another program (FFCV's own ImageNet and CIFAR scripts).

Those scripts write `image` (RGBImageField) and `label` (IntField) fields, as `visiontrain prep` does, but no
meta.json: describing the files is enough to train on them, converting 1.2 M images again is not
needed. Everything comes from the files' own tables (labels, image sizes and storage modes of every
sample: no image decoded), except the decode check and the colour statistics, which come from an
evenly spaced sample of images. FFCV's decoder ignores a failed JPEG decode (it leaves the buffer as
it was), so the sample is decoded here, with PIL, where a damaged image is an error.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from visiontrain.data.prep.beton import ScanResult, split_meta
from visiontrain.data.prep.output import write_meta
from visiontrain.data.sources import Samples
from visiontrain.infra import fileio
from visiontrain.infra.errors import UsageError

# What the FFCV loader reads (visiontrain.data.ffcv_loader): these two fields, in this order.
FIELDS = (("image", "RGBImageField"), ("label", "IntField"))
JPG, RAW = 0, 1  # FFCV's storage modes of an RGBImageField sample
REMEDY = "copy it again, or write it again with the program that made it"
# Labels beyond this are not class indices (a meta.json naming each class would be huge).
MAX_NUMBERED = 100_000


@dataclass
class Split:
    labels: np.ndarray  # every sample's
    widths: np.ndarray
    heights: np.ndarray
    modes: np.ndarray
    channel_sum: np.ndarray  # of the decoded sample's pixel values in [0, 1]
    channel_sq_sum: np.ndarray
    pixels: int
    decoded: int


def parse_class_names(value: str | None) -> list[str] | None:
    """A file with one name per line, or a comma-separated list; None: number the classes."""
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is no part of the first name
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"--class-names {value}: unreadable ({type(err).__name__}: {err})") from None
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:  # trailing blank lines; one inside the list would shift every later label
            names.pop()
    elif "," in value:
        names = [name.strip() for name in value.split(",")]
    else:
        raise UsageError(f"--class-names {value}: no such file; give a file with one name per line or a "
                         "comma-separated list")
    if "" in names:
        raise UsageError(f"--class-names {value}: name {names.index('') + 1} is empty; give one name per class, "
                         "in label order")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UsageError(f"--class-names {value}: '{name}' twice; class names must be distinct")
        seen.add(name)
    if len(names) < 2:
        raise UsageError(f"--class-names {value}: {len(names)} name; give at least 2")
    return names


def _bytes_of(file, ptrs: np.ndarray, sizes: np.ndarray, data_ptr: int) -> bytes:
    """One sample's stored image: the allocation that starts at its pointer (`ptrs` sorted)."""
    file.seek(data_ptr)
    return file.read(int(sizes[np.searchsorted(ptrs, data_ptr)]))


def _decode(data: bytes, mode: int, width: int, height: int) -> np.ndarray:
    """The image's pixels in [0, 1]; JPEGs at 1/8 scale, as the writers' statistics (the whole stream is read)."""
    if mode == RAW:
        if len(data) != width * height * 3:
            raise ValueError(f"{len(data)} bytes for {width}x{height} raw pixels")
        return np.frombuffer(data, np.uint8).astype(np.float64) / 255.0
    with Image.open(io.BytesIO(data)) as img:
        if img.format != "JPEG" or img.size != (width, height):
            raise ValueError(f"a {img.format} image of {img.size[0]}x{img.size[1]} where a {width}x{height} JPEG "
                             "is recorded")
        img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        img.load()
        return np.asarray(img.convert("RGB"), dtype=np.float64).reshape(-1) / 255.0


def read_split(path: Path, sample: int) -> Split:
    """Labels and image sizes of every sample of one .beton, and a decoded sample of its images."""
    from visiontrain.data.ffcv_loader import open_beton

    reader = open_beton(path, REMEDY)
    kinds = [type(handler).__name__ for handler in reader.handlers.values()]
    if tuple(zip(reader.field_names, kinds)) != FIELDS:
        found = ", ".join(f"{name} ({kind})" for name, kind in zip(reader.field_names, kinds))
        raise UsageError(f"{path} has fields: {found}; the FFCV loader reads 'image' (RGBImageField) then 'label' "
                         "(IntField), the fields FFCV's ImageNet and CIFAR scripts write")
    images, labels = reader.metadata["f0"], np.asarray(reader.metadata["f1"])
    table = np.sort(reader.alloc_table, order="ptr")
    ptrs, sizes = table["ptr"], table["size"]
    known = np.isin(images["data_ptr"], ptrs)
    bad = np.flatnonzero(~np.isin(images["mode"], (JPG, RAW)) | (images["width"] == 0) | (images["height"] == 0)
                         | ~known)
    if len(bad):
        raise UsageError(f"{path} is damaged: sample {int(bad[0])}'s image entry is not valid "
                         f"({len(bad)} such samples); {REMEDY}")

    chosen = np.unique(np.linspace(0, len(labels) - 1, min(sample, len(labels))).round().astype(np.int64))
    total, total_sq, pixels = np.zeros(3), np.zeros(3), 0
    with open(path, "rb") as file:
        for index in chosen:
            entry = images[index]
            width, height, mode = int(entry["width"]), int(entry["height"]), int(entry["mode"])
            data = _bytes_of(file, ptrs, sizes, int(entry["data_ptr"]))
            try:
                flat = _decode(data, mode, width, height).reshape(-1, 3)
            except Exception as err:  # PIL raises many types for damaged data; all mean "not this image"
                kind = "JPEG" if mode == JPG else "raw"
                raise UsageError(f"{path}: sample {int(index)} ({kind} {width}x{height}) does not decode "
                                 f"({type(err).__name__}: {err}); {REMEDY}") from None
            total += flat.sum(0)
            total_sq += (flat**2).sum(0)
            pixels += flat.shape[0]
    return Split(labels, images["width"], images["height"], images["mode"], total, total_sq, pixels, len(chosen))


def class_list(splits: dict[str, Split], given: list[str] | None, files: dict[str, Path],
               option: str | None) -> list[str]:
    """The given names after checking every label against them, or "0", "1", ... up to the largest label."""
    for split, s in splits.items():
        if len(s.labels) and int(s.labels.min()) < 0:
            raise UsageError(f"{files[split]} has a negative label ({int(s.labels.min())}); labels count classes "
                             "from 0")
        if given is not None and len(s.labels) and int(s.labels.max()) >= len(given):
            raise UsageError(f"{files[split]} has labels up to {int(s.labels.max())} but --class-names gives "
                             f"{len(given)} names ({option}), for labels 0-{len(given) - 1}; give one name per "
                             "class, in label order")
    if given is not None:
        return given
    count = 1 + max(int(s.labels.max()) for s in splits.values())
    if count > MAX_NUMBERED:
        raise UsageError(f"{files['train']} and {files['val']} have labels up to {count - 1}: more than "
                         f"{MAX_NUMBERED:,} numbered classes; labels are class indices 0..K-1 (name the classes "
                         "with --class-names)")
    if count < 2:
        raise UsageError(f"every label in {files['train']} and {files['val']} is 0: a classifier needs at least "
                         "2 classes")
    return [str(label) for label in range(count)]


def _write_mode(splits: dict[str, Split]) -> str:
    modes = set(np.unique(np.concatenate([s.modes for s in splits.values()])).tolist())
    return "+".join(name for name, mode in (("raw", RAW), ("jpg", JPG)) if mode in modes)


def describe(directory: Path, class_names: str | None, force: bool, sample: int) -> dict:
    """Check the two betons in `directory` and write its meta.json (as the other writers do); returns it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"--beton {directory} is not a directory; give the directory that holds train.beton and "
                         "val.beton")
    files = {split: directory / f"{split}.beton" for split in ("train", "val")}
    for file in files.values():
        if not file.is_file():
            raise UsageError(f"no {file.name} in --beton {directory}; it needs train.beton and val.beton")
    if sample < 1:
        raise UsageError(f"--sample {sample}: must be >= 1 (images decoded per split)")
    if (directory / "meta.json").exists() and not force:
        raise UsageError(f"{directory / 'meta.json'} already exists; pass --force to replace it")
    given = parse_class_names(class_names)

    splits = {split: read_split(file, sample) for split, file in files.items()}
    names = class_list(splits, given, files, class_names)
    described = {}
    for split, s in splits.items():
        # The writers' own summary of a split, from the values read here: the same keys, the same format.
        meta = split_meta(Samples(names, s.labels.tolist()),
                          ScanResult(list(range(len(s.labels))), [], s.widths, s.heights, s.channel_sum,
                                     s.channel_sq_sum, s.pixels))
        meta["stored"] = {"raw": int((s.modes == RAW).sum()), "jpg": int((s.modes == JPG).sum())}
        meta["decoded"] = s.decoded  # images decoded to check them and for mean/std
        described[split] = meta
    meta = {"source": f"FFCV .beton files in {directory}, written by another program; described by "
                      "python -m visiontrain prep describe",
            "class_names": names, "num_classes": len(names),
            "mean": described["train"]["mean"], "std": described["train"]["std"], "splits": described,
            "options": {"write_mode": _write_mode(splits), "sample": sample,
                        "class_names": "numbered" if given is None else "given"}}
    fileio.clean_leftovers(directory, stem="meta.json")  # a temporary meta.json of a killed run
    write_meta(directory, meta)
    return meta


def next_command(directory: Path, meta: dict) -> str:
    """The train.py command for these files: the CIFAR recipe for images all of one square size (it reads them
    as they are), the ImageNet recipe (random-resized crops) otherwise."""
    sides = {meta["splits"][split]["image_size"][axis][end] for split in ("train", "val")
             for axis in ("width", "height") for end in ("min", "max")}
    common = f"data.path={directory} data.loader=ffcv model.num_classes={meta['num_classes']}"
    if len(sides) == 1:
        size = sides.pop()
        return (f"python train.py -c configs/cifar10/resnet18.yaml {common}"
                + (f" data.image_size={size} data.val_image_size={size}" if size != 32 else ""))
    return f"python train.py -c configs/imagenet/resnet50.yaml {common}"
