"""Dataset writers: FFCV .beton files (train.beton, val.beton, meta.json) from images.

    python -m visiontrain prep cifar10   --out data/cifar10 [--source DIR]
    python -m visiontrain prep imagenet  --train DIR --val DIR [--val-labels FILE] --out data/imagenet
    python -m visiontrain prep folder    --train DIR [--val DIR | --val-fraction F --seed S] --out DIR
    python -m visiontrain prep synthetic --out data/shapes [--beton]
    python -m visiontrain prep describe  --beton DIR [--class-names FILE_OR_LIST] [--force]

`describe` writes only DIR/meta.json, for train.beton and val.beton written by FFCV's own
scripts (ffcv-imagenet's write_imagenet.py, FFCV's CIFAR write_datasets.py).
Output is written under a temporary name and renamed at the end; an existing --out (or
meta.json) is refused without --force. Exit codes: 0 done, 2 bad arguments or input
(nothing is left under --out), 1 failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path

from visiontrain.infra.errors import UsageError, run_cli


def _image_options(p: argparse.ArgumentParser, write_mode: str, max_res: int | None) -> None:
    p.add_argument("--write-mode", choices=("raw", "jpg", "proportion", "smart"), default=write_mode,
                   help=f"how images are stored (default {write_mode})")
    p.add_argument("--max-res", type=int, default=max_res, help="cap on the longer image side, pixels")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--compress-prob", type=float, default=0.5, help="proportion mode: fraction stored as JPEG")
    p.add_argument("--smart-threshold", type=int, default=256 * 256 * 3,
                   help="smart mode: images with more values than this are stored as JPEG")
    p.add_argument("--chunk-size", type=int, default=100, help="samples per writer work item")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--on-bad", choices=("stop", "skip"), default="stop",
                   help="a file that is not a readable image: stop with its path (default) or skip and count it")
    p.add_argument("--force", action="store_true", help="replace an existing --out")


def _options(args: argparse.Namespace):
    from visiontrain.data.prep.beton import BetonOptions

    if args.max_res is not None and args.max_res < 8:
        raise UsageError(f"--max-res {args.max_res}: must be >= 8")
    if not 1 <= args.jpeg_quality <= 100:
        raise UsageError(f"--jpeg-quality {args.jpeg_quality}: must be in [1, 100]")
    if not 0 <= args.compress_prob <= 1:
        raise UsageError(f"--compress-prob {args.compress_prob}: must be in [0, 1]")
    if args.chunk_size < 1 or args.workers < 1:
        raise UsageError("--chunk-size and --workers must be >= 1")
    return BetonOptions(write_mode=args.write_mode, max_res=args.max_res, jpeg_quality=args.jpeg_quality,
                        compress_prob=args.compress_prob, smart_threshold=args.smart_threshold,
                        chunk_size=args.chunk_size, workers=args.workers)


def write_dataset(out: Path, force: bool, train, val, options, on_bad: str, source: str,
                  extra: dict | None = None, into: Path | None = None) -> dict:
    """Write both splits, checking and measuring every file as it is written (one decode per file).
    Images in memory and --on-bad skip (the good files must be known first) are scanned beforehand."""
    from visiontrain.data.prep.beton import can_measure_while_writing, scan, split_meta, write_beton
    from visiontrain.data.prep.output import atomic_output_dir, write_meta

    def write_into(directory: Path) -> dict:
        splits = {}
        for split, samples in (("val", val), ("train", train)):  # val first: its bad file stops it early
            beton = directory / f"{split}.beton"
            if samples.array is None and on_bad == "stop" and can_measure_while_writing():
                result = write_beton(samples, beton, options, measure=True)
            else:
                result = scan(samples, options.workers, on_bad, split)
                write_beton(samples.subset(result.good) if result.bad else samples, beton, options)
            splits[split] = split_meta(samples, result)
        meta = {"source": source, "class_names": train.class_names, "num_classes": len(train.class_names),
                "mean": splits["train"]["mean"], "std": splits["train"]["std"],
                "splits": {"train": splits["train"], "val": splits["val"]},
                "options": {**asdict(options), "on_bad": on_bad}, **(extra or {})}
        write_meta(directory, meta)
        return meta

    if into is not None:  # already inside an atomic output dir
        return write_into(into)
    with atomic_output_dir(out, force) as tmp:
        meta = write_into(tmp)
    return meta


def _report(out: Path, meta: dict) -> None:
    s = meta["splits"]
    skipped = s["train"]["skipped"] + s["val"]["skipped"]
    print(f"wrote {out}/train.beton ({s['train']['samples']} images), {out}/val.beton ({s['val']['samples']} "
          f"images), {meta['num_classes']} classes" + (f"; skipped {skipped} bad files" if skipped else ""))


def run_cifar10(args: argparse.Namespace) -> None:
    from visiontrain.data.prep import sources
    from visiontrain.data.sources import class_folders, find_cifar_dir

    options = _options(args)
    if args.source is None:
        train, val = _download_cifar10(args.download_dir)
        origin = "torchvision CIFAR10 download"
    else:
        root = Path(args.source)
        batches = find_cifar_dir(root) if root.is_dir() else None
        if batches is not None:
            train, val = sources.cifar10_batches(batches)
            origin = f"CIFAR-10 python batches at {batches}"
        elif (root / "train").is_dir():
            train = class_folders(root / "train", "--source train folder")
            val_root = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
            if val_root is not None:
                val = class_folders(val_root, "--source val folder")
                sources.check_same_classes(train, val, val_root)
                origin = f"image folders {root}/train and {val_root}"
            else:
                train, val = sources.stratified_split(train, args.val_fraction, args.seed)
                origin = (f"image folder {root}/train, stratified val split of {args.val_fraction} "
                          f"(seed {args.seed})")
        else:
            raise UsageError(f"--source {root}: expected cifar-10-batches-py/ or train/<class>/ image folders")
    meta = write_dataset(args.out, args.force, train, val, options, args.on_bad, origin)
    _report(args.out, meta)


def _download_cifar10(directory: Path):
    from torchvision.datasets import CIFAR10

    from visiontrain.data.sources import Samples

    try:
        train = CIFAR10(str(directory), train=True, download=True)
        val = CIFAR10(str(directory), train=False, download=True)
    except Exception as err:  # no network, proxy, checksum: all mean "use --source"
        raise UsageError(f"could not download CIFAR-10 into {directory} ({type(err).__name__}); "
                         "pass --source with cifar-10-batches-py/ or train/<class>/ folders") from None
    return (Samples(list(train.classes), list(train.targets), array=train.data),
            Samples(list(val.classes), list(val.targets), array=val.data))


def run_imagenet(args: argparse.Namespace) -> None:
    from visiontrain.data.prep import sources
    from visiontrain.data.sources import class_folders

    train = class_folders(args.train, "--train")
    val = sources.imagenet_val(args.val, train.class_names, args.val_labels)
    sources.check_same_classes(train, val, args.val)
    meta = write_dataset(args.out, args.force, train, val, _options(args), args.on_bad,
                         f"ImageNet layout: train {args.train}, val {args.val}")
    _report(args.out, meta)


def run_folder(args: argparse.Namespace) -> None:
    from visiontrain.data.prep import sources
    from visiontrain.data.sources import class_folders

    train = class_folders(args.train, "--train")
    if args.val is not None and args.val_fraction is not None:
        raise UsageError("give either --val or --val-fraction, not both")
    if args.val is not None:
        val = class_folders(args.val, "--val")
        sources.check_same_classes(train, val, args.val)
        origin = f"image folders: train {args.train}, val {args.val}"
    elif args.val_fraction is not None:
        train, val = sources.stratified_split(train, args.val_fraction, args.seed)
        origin = f"image folder {args.train}, stratified val split of {args.val_fraction} (seed {args.seed})"
    else:
        raise UsageError("folder needs --val DIR or --val-fraction F")
    meta = write_dataset(args.out, args.force, train, val, _options(args), args.on_bad, origin)
    _report(args.out, meta)


def run_synthetic(args: argparse.Namespace) -> None:
    from visiontrain.data.prep.beton import BetonOptions
    from visiontrain.data.prep.output import atomic_output_dir, write_meta
    from visiontrain.data.prep.synthetic import SHAPES, write_image_folder

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    unknown = [c for c in classes if c not in SHAPES]
    if unknown or len(classes) < 2 or len(set(classes)) != len(classes):
        raise UsageError(f"--classes {args.classes!r}: give two or more distinct names from {', '.join(SHAPES)}")
    if args.train_per_class < 1 or args.val_per_class < 1:
        raise UsageError("--train-per-class and --val-per-class must be >= 1")
    if args.size < 8:
        raise UsageError(f"--size {args.size}: must be >= 8")
    options = {"seed": args.seed, "train_per_class": args.train_per_class, "val_per_class": args.val_per_class}
    with atomic_output_dir(args.out, args.force) as tmp:
        counts = write_image_folder(tmp, classes, {"train": args.train_per_class, "val": args.val_per_class},
                                    args.size, args.seed)
        # Labels follow sorted class names, as torchvision's ImageFolder numbers them: the
        # folders and the .beton files of one dataset directory agree.
        extra = {"generator": options, "counts": counts, "class_names": sorted(classes)}
        if args.beton:
            from visiontrain.data.sources import class_folders  # torch: paid only when writing .beton files

            train, val = class_folders(tmp / "train"), class_folders(tmp / "val")
            write_dataset(args.out, False, train, val, BetonOptions(write_mode="raw", workers=args.workers),
                          "stop", "synthetic shapes", extra, into=tmp)
        else:
            write_meta(tmp, {"source": "synthetic shapes", "num_classes": len(classes),
                             "image_size": [args.size, args.size], **extra})
    total = args.train_per_class * len(classes) + args.val_per_class * len(classes)
    print(f"wrote {total} images ({len(classes)} classes) to {args.out}" +
          (" with train.beton and val.beton" if args.beton else ""))


def run_describe(args: argparse.Namespace) -> None:
    from visiontrain.data.prep.describe import describe, next_command

    meta = describe(args.beton, args.class_names, args.force, args.sample)
    s = meta["splits"]
    names = (f"numbered 0-{meta['num_classes'] - 1}; --class-names names them" if meta["options"]["class_names"]
             == "numbered" else "names from --class-names")
    print(f"wrote {args.beton / 'meta.json'}: train.beton {s['train']['samples']} images, val.beton "
          f"{s['val']['samples']} images, {meta['num_classes']} classes ({names})")
    print(f"train on it: {next_command(args.beton, meta)}")


def main(argv: list[str]) -> int:
    from visiontrain.data.prep.synthetic import SHAPES

    parser = argparse.ArgumentParser(prog="python -m visiontrain prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("cifar10", help="CIFAR-10 (raw 32x32 pixels) from a download or an existing copy")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--source", type=Path, help="cifar-10-batches-py/, or a folder with train/<class>/ images")
    p.add_argument("--download-dir", type=Path, default=Path("data/downloads"))
    p.add_argument("--val-fraction", type=float, default=0.1, help="when --source has no val/ or test/")
    p.add_argument("--seed", type=int, default=0)
    _image_options(p, "raw", None)
    p.set_defaults(run=run_cifar10)

    p = sub.add_parser("imagenet", help="ILSVRC layout: train/<wnid>/*.JPEG; val as folders or flat + labels")
    p.add_argument("--train", required=True, type=Path)
    p.add_argument("--val", required=True, type=Path)
    p.add_argument("--val-labels", type=Path, help="for a flat val folder: LOC_val_solution.csv or 'file wnid'")
    p.add_argument("--out", required=True, type=Path)
    _image_options(p, "proportion", 512)
    p.set_defaults(run=run_imagenet)

    p = sub.add_parser("folder", help="any class-per-folder dataset")
    p.add_argument("--train", required=True, type=Path)
    p.add_argument("--val", type=Path)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path)
    _image_options(p, "smart", None)
    p.set_defaults(run=run_folder)

    p = sub.add_parser("synthetic", help="generate the learnable shapes dataset (image folders, optional .beton)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--classes", default=",".join(SHAPES), help=f"comma-separated subset of: {','.join(SHAPES)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beton", action="store_true", help="also write train.beton and val.beton")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(run=run_synthetic)

    p = sub.add_parser("describe", help="write meta.json for train.beton/val.beton written by FFCV's own scripts")
    p.add_argument("--beton", required=True, type=Path, metavar="DIR",
                   help="the directory holding train.beton and val.beton")
    p.add_argument("--class-names", metavar="FILE_OR_LIST", help="a file with one name per line, or a "
                   "comma-separated list, in label order (default: numbered 0..max label)")
    p.add_argument("--sample", type=int, default=1000, metavar="N",
                   help="images per split decoded to check them and for mean/std (default 1000)")
    p.add_argument("--force", action="store_true", help="replace an existing meta.json")
    p.set_defaults(run=run_describe)

    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
