"""Throughput benchmarks.

    python -m visiontrain.bench overhead [--steps 10] [--rounds 12] [section.key=value ...]
    python -m visiontrain.bench loader [--workers 2] [--epochs 3] [--res 160 192] [--out DIR]
    python -m visiontrain.bench memory [--model resnet50] [--nproc 2] [--optim sgd] [--backends ddp zero1 ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from visiontrain.errors import run_cli


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m visiontrain.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    overhead = sub.add_parser("overhead", help="train.py's engine vs a bare PyTorch loop, same model and batches")
    overhead.add_argument("--steps", type=int, default=10, help="steps per round")
    overhead.add_argument("--rounds", type=int, default=12, help="alternating rounds (plus one warm-up)")
    overhead.add_argument("overrides", nargs="*", metavar="section.key=value")
    loader = sub.add_parser("loader", help="FFCV vs torchvision data loading on the shared real images")
    loader.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "datasets")
    loader.add_argument("--work", type=Path, default=Path("runs/bench_loader_data"), help="prepared data (reused)")
    loader.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    loader.add_argument("--epochs", type=int, default=3, help="timed epochs per loader (after one warm-up)")
    loader.add_argument("--imagenet-samples", type=int, default=5000)
    loader.add_argument("--res", type=int, nargs="+", default=[160, 192])
    loader.add_argument("--out", type=Path, help="write loader_results.json here")
    memory = sub.add_parser("memory", help="training-state memory per rank: DDP vs DeepSpeed ZeRO 1/2/3")
    memory.add_argument("--model", default="resnet50")
    memory.add_argument("--nproc", type=int, default=2)
    memory.add_argument("--image-size", type=int, default=64)
    memory.add_argument("--batch", type=int, default=4, help="images per rank per step")
    memory.add_argument("--steps", type=int, default=3)
    memory.add_argument("--backends", nargs="+", default=["ddp", "zero1", "zero2", "zero3"])
    memory.add_argument("--optim", default="sgd", choices=("sgd", "adamw"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if args.mode == "overhead":
        from visiontrain.bench.overhead import measure, report

        print(report(measure(args.overrides, args.steps, args.rounds)))
    elif args.mode == "memory":
        from visiontrain.bench import memory as memory_bench

        results = memory_bench.run(args.model, args.nproc, args.image_size, args.batch, args.steps, args.backends,
                                   args.optim)
        print(memory_bench.report(results, args.model, args.nproc, args.optim))
    else:
        from visiontrain.bench import loader as loader_bench

        rows = loader_bench.run(args.shared, args.work, args.workers, args.epochs, args.imagenet_samples, args.res,
                                args.out)
        print(loader_bench.report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
