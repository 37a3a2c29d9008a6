"""Writing a dataset directory all-or-nothing.

Everything is written under a hidden temporary sibling of the output directory and
renamed into place at the end, so a crash or Ctrl-C leaves no half dataset under the
final name. An existing output is refused unless `force` is given.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from visiontrain.errors import UsageError

WRITER_VERSION = 1


@contextmanager
def atomic_output_dir(out: Path, force: bool) -> Iterator[Path]:
    out = Path(out)
    if out.exists() and not force:
        raise UsageError(f"output {out} already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset is not
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    (directory / "meta.json").write_text(json.dumps({"writer_version": WRITER_VERSION, **meta}, indent=2) + "\n")
