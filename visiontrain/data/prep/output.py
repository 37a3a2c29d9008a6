"""Writing a dataset directory all-or-nothing.

Everything is written under a hidden temporary sibling of the output directory and
renamed into place at the end, so a crash or Ctrl-C leaves no half dataset under the
final name. An existing output is refused unless `force` is given.
"""

from __future__ import annotations

import errno
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from visiontrain.infra import fileio
from visiontrain.infra.errors import FULL, UsageError

WRITER_VERSION = 1
# Errors that can only come from writing the output (a read of an input names its file, or is another errno).
WRITE_FAILURES = {*FULL, errno.EROFS}


@contextmanager
def atomic_output_dir(out: Path, force: bool) -> Iterator[Path]:
    out = Path(out)
    for leftover in fileio.clean_leftovers(out.parent, stem=out.name):
        print(f"removed {out.parent / leftover}, left by a run that was killed while writing it")
    if out.exists() and not force:
        raise UsageError(f"output {out} already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_dir(out) as tmp:
        try:
            yield tmp
        except OSError as err:
            if err.filename is None and err.errno in WRITE_FAILURES:  # numpy and FFCV's writers name no file
                raise OSError(err.errno, err.strerror, str(out)) from err
            raise


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    fileio.write_json(directory / "meta.json", {"writer_version": WRITER_VERSION, **meta})
