"""FFCV's own writer, as a user of FFCV writes ImageNet without this project (ffcv-imagenet's
write_imagenet.py): torchvision's ImageFolder (PIL images) into DatasetWriter with an RGBImageField.
`bench prep` times it against `visiontrain prep imagenet` with the same field settings.

    python -m visiontrain.bench.ffcv_writer TRAIN_DIR VAL_DIR OUT_DIR --workers 2 --max-res 256
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("train", type=Path)
    parser.add_argument("val", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-res", type=int, default=256)
    parser.add_argument("--write-mode", default="jpg")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--chunk-size", type=int, default=100)
    args = parser.parse_args(argv)

    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    args.out.mkdir(parents=True, exist_ok=True)
    for split, folder in (("train", args.train), ("val", args.val)):
        writer = DatasetWriter(str(args.out / f"{split}.beton"), {
            "image": RGBImageField(write_mode=args.write_mode, max_resolution=args.max_res,
                                   jpeg_quality=args.jpeg_quality),
            "label": IntField()}, num_workers=args.workers)
        writer.from_indexed_dataset(ImageFolder(str(folder)), chunksize=args.chunk_size)


if __name__ == "__main__":
    main()
