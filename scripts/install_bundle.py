"""Install the GPU bundle's wheels that this Python lacks into one folder, with pip alone and no index.

Only distributions the interpreter does not already have are installed (`pip install --no-index
--no-deps --target SITE`): the machine's own torch, numpy, numba... are never shadowed by the
bundle's copies. Then every module the project needs is imported from SITE plus the machine's
packages, and a missing one is named (exit 1). Standard library only: it runs before anything
else is installed.

Usage: python scripts/install_bundle.py WHEELS SITE   (then PYTHONPATH=SITE)
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

# What the evidence script's parts import beyond the machine's image (scripts/gpu_image.txt).
NEEDED_MODULES = ("ffcv", "omegaconf", "yaml", "numba", "cv2", "safetensors", "psutil", "packaging", "PIL")
# Carried only so that an offline `make setup` can build the project itself; not needed to run it.
BUILD_ONLY = {"setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python scripts/install_bundle.py WHEELS SITE", file=sys.stderr)
        return 2
    wheels, site = Path(sys.argv[1]), Path(sys.argv[2])
    found = sorted(wheels.glob("*.whl"))
    if not found:
        print(f"install_bundle: {wheels} holds no wheels (build it with make gpu-bundle)", file=sys.stderr)
        return 2
    chosen = []
    for wheel in found:
        name = canonical(wheel.name.split("-")[0])
        have = installed(name)
        if name in BUILD_ONLY:
            continue
        if have is not None:
            print(f"install_bundle: {name}: the machine has {have}")
        else:
            chosen.append(wheel)
    site.mkdir(parents=True, exist_ok=True)
    if chosen:
        print(f"install_bundle: installing {', '.join(w.name.split('-')[0] for w in chosen)} into {site}")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                               "--disable-pip-version-check", "--upgrade", "--target", str(site),
                               *map(str, chosen)])
        if done.returncode:
            print(f"install_bundle: pip failed (exit {done.returncode})", file=sys.stderr)
            return 1
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    check = ("import importlib, sys\nmissing = []\nfor m in sys.argv[1:]:\n    try: importlib.import_module(m)\n"
             "    except Exception as e: missing.append(f'{m} ({type(e).__name__}: {e})')\n"
             "print('; '.join(missing)); sys.exit(1 if missing else 0)")
    result = subprocess.run([sys.executable, "-c", check, *NEEDED_MODULES], env=env, capture_output=True, text=True)
    if result.returncode:
        print(f"install_bundle: cannot import {result.stdout.strip() or result.stderr.strip()[-500:]}",
              file=sys.stderr)
        return 1
    print(f"install_bundle: ok, {len(chosen)} installed, imports of {', '.join(NEEDED_MODULES)} work")
    return 0


if __name__ == "__main__":
    sys.exit(main())
