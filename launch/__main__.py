"""Kept for one release: the same as `visiontrain launch`."""

import sys

from visiontrain.infra.errors import run_cli
from visiontrain.launch.cli import main

sys.exit(run_cli(main))
