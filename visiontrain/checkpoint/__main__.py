"""python -m visiontrain.checkpoint: the same as `visiontrain checkpoint`."""

import sys

from visiontrain.checkpoint.cli import main
from visiontrain.infra.errors import run_cli

sys.exit(run_cli(main))
