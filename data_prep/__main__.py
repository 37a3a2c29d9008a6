"""Kept for one release: the same as `visiontrain prep`."""

import sys

from visiontrain.data.prep.cli import main
from visiontrain.infra.errors import run_cli

sys.exit(run_cli(main))
