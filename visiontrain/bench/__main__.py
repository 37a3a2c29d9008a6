"""python -m visiontrain.bench: the same as `visiontrain bench`."""

import sys

from visiontrain.bench.cli import main
from visiontrain.infra.errors import run_cli

sys.exit(run_cli(main))
