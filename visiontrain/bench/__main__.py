"""Throughput benchmarks.

    python -m visiontrain.bench overhead [--steps 10] [--rounds 12] [section.key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import sys

from visiontrain.errors import run_cli


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m visiontrain.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    overhead = sub.add_parser("overhead", help="train.py's engine vs a bare PyTorch loop, same model and batches")
    overhead.add_argument("--steps", type=int, default=10, help="steps per round")
    overhead.add_argument("--rounds", type=int, default=12, help="alternating rounds (plus one warm-up)")
    overhead.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from visiontrain.bench.overhead import measure, report

    print(report(measure(args.overrides, args.steps, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
