"""python -m visiontrain checkpoint export RUN_DIR [--out FILE]: a run's newest readable checkpoint as
weights.safetensors (+ weights_ema.safetensors). Its own module, so that the store does not import
visiontrain.checkpoint.weights, which imports the store.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from visiontrain.checkpoint.weights import export_run
from visiontrain.infra.errors import run_cli


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m visiontrain checkpoint")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="consolidate a run's newest checkpoint into weights.safetensors")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--out", type=Path, help="default: RUN_DIR/weights.safetensors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"wrote {export_run(args.run_dir, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
