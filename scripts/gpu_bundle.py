"""Build the GPU bundle: what a borrowed GPU machine lacks, to be carried along with the checkout.

A measuring machine lent for a few minutes has its own Python 3.12 image (scripts/gpu_image.txt:
torch, torchvision and a few libraries) and no network. This folder holds the rest:

- `wheels/`: the project's dependencies for CPython 3.12 on Linux x86_64 (scripts/wheelhouse.py:
  the self-contained FFCV wheel, DeepSpeed, omegaconf and its antlr4 runtime, submitit...), without
  torch, torchvision and every package the image already has;
- `data/`: the CIFAR-10 training JPEGs and the 200 ImageNet photos the measurements train on.

It must fit, with the tracked files of the checkout, in what one command carries (--limit-mib,
default 60 of the 64 MiB): the sizes are printed, and a bundle over the limit is removed with a
one-line error (exit 2). scripts/gpu_evidence.sh installs and uses it.

Usage: python scripts/gpu_bundle.py [OUT] [--shared DIR] [--limit-mib 60]   (OUT default: gpu-bundle;
--shared default: $VISIONTRAIN_SHARED_DATASETS, else ../shared/datasets beside the checkout)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from wheelhouse import build as build_wheelhouse
from wheelhouse import canonical, resolve_pins

from visiontrain.infra import fileio

ROOT = Path(__file__).resolve().parent.parent
IMAGE = Path(__file__).resolve().parent / "gpu_image.txt"
IMAGE_PYTHON = "3.12"
DATA_FILES = ("cifar10-train-jpeg.tar.gz", "imagenet-sample-200.tar")
MIB = 2**20


def fail(message: str) -> None:
    print(f"gpu_bundle: {message}", file=sys.stderr)
    sys.exit(2)


def image_packages() -> list[str]:
    """The names in scripts/gpu_image.txt (versions dropped: the closure is resolved at the lock's)."""
    lines = (line.split("#")[0].strip() for line in IMAGE.read_text().splitlines())
    return [re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0] for line in lines if line]


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return sum((ROOT / name).stat().st_size for name in files.decode().split("\0")
               if name and (ROOT / name).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, nargs="?", default=ROOT / "gpu-bundle")
    shared = os.environ.get("VISIONTRAIN_SHARED_DATASETS", ROOT.parent / "shared" / "datasets")
    parser.add_argument("--shared", type=Path, default=Path(shared),
                        help="the folder holding " + " and ".join(DATA_FILES))
    parser.add_argument("--limit-mib", type=float, default=60.0, help="bundle + tracked files must fit in this")
    args = parser.parse_args()
    missing = [name for name in DATA_FILES if not (args.shared / name).is_file()]
    if missing:
        fail(f"--shared {args.shared}: {missing[0]} not found (it must hold {', '.join(DATA_FILES)})")
    if args.out.exists() and any(args.out.iterdir()):
        fail(f"{args.out} exists and is not empty: remove it first (make gpu-bundle rebuilds it)")

    have = {canonical(name) for name in resolve_pins(IMAGE_PYTHON, *image_packages())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed when complete and within the limit: never half a bundle.
    with fileio.atomic_dir(args.out) as staging:
        (staging / "wheels").mkdir()
        manifest = build_wheelhouse(staging / "wheels", IMAGE_PYTHON, skip_torch=True, have=have)
        (staging / "data").mkdir()
        for name in DATA_FILES:
            shutil.copyfile(args.shared / name, staging / "data" / name)
        sizes = {"tracked files": tracked_bytes(), "wheels": folder_bytes(staging / "wheels"),
                 "data": folder_bytes(staging / "data")}
        for part, size in sizes.items():
            print(f"gpu_bundle: {part}: {size / MIB:.1f} MiB")
        total = sum(sizes.values()) / MIB
        print(f"gpu_bundle: {len(manifest['packages'])} packages; in all {total:.1f} MiB of {args.limit_mib:g}")
        if total > args.limit_mib:
            fail(f"bundle + tracked files = {total:.1f} MiB, over --limit-mib {args.limit_mib:g}")
    print(f"gpu_bundle: {args.out}")


if __name__ == "__main__":
    main()
