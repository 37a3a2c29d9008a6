"""python -m visiontrain.evaluate: the same as `visiontrain evaluate`."""

import sys

from visiontrain.evaluate.cli import main
from visiontrain.infra.errors import run_cli

sys.exit(run_cli(main))
