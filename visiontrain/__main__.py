"""python -m visiontrain SUBCOMMAND ...: the `visiontrain` command without the installed script."""

import sys

from visiontrain.cli import run

sys.exit(run())
