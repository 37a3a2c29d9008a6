"""Dataset writers.

    python -m data_prep synthetic --out data/shapes [--train-per-class 500] ...

Exit codes: 0 done, 2 bad arguments or input (nothing is left under --out), 1 failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from visiontrain.errors import UsageError, run_cli


def _add_synthetic(sub) -> None:
    from data_prep.synthetic import SHAPES

    p = sub.add_parser("synthetic", help="generate the learnable shapes dataset as an image folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--classes", default=",".join(SHAPES), help=f"comma-separated subset of: {','.join(SHAPES)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(run=run_synthetic)


def run_synthetic(args: argparse.Namespace) -> None:
    from data_prep.output import atomic_output_dir, write_meta
    from data_prep.synthetic import SHAPES, write_image_folder

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    unknown = [c for c in classes if c not in SHAPES]
    if unknown or len(classes) < 2 or len(set(classes)) != len(classes):
        raise UsageError(f"--classes {args.classes!r}: give two or more distinct names from {', '.join(SHAPES)}")
    if args.train_per_class < 1 or args.val_per_class < 1:
        raise UsageError("--train-per-class and --val-per-class must be >= 1")
    if args.size < 8:
        raise UsageError(f"--size {args.size}: must be >= 8")
    with atomic_output_dir(args.out, args.force) as tmp:
        counts = write_image_folder(tmp, classes, {"train": args.train_per_class, "val": args.val_per_class},
                                    args.size, args.seed)
        write_meta(tmp, {"source": "synthetic shapes", "class_names": classes, "counts": counts,
                         "image_size": [args.size, args.size],
                         "options": {"seed": args.seed, "train_per_class": args.train_per_class,
                                     "val_per_class": args.val_per_class}})
    total = sum(sum(c.values()) for c in counts.values())
    print(f"wrote {total} images ({len(classes)} classes) to {args.out}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_synthetic(sub)
    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
