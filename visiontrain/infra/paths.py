"""Where the source checkout is: requirements/, configs/ and docs/ are read from it (an editable install)."""

from pathlib import Path

SOURCE_TREE = Path(__file__).resolve().parents[2]
