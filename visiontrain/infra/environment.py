"""The environment record of a result (summary.json, benchmark results.json): git commit, packages, CPU, GPU, driver."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from visiontrain.infra.paths import SOURCE_TREE
from visiontrain.infra.pinned_versions import differences_from_lock


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    repo = SOURCE_TREE
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    """What produced a result: code version, packages, hardware."""
    commit = _git("rev-parse", "HEAD")
    env: dict[str, Any] = {
        "git_commit": commit,
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None,
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in ("torch", "torchvision", "accelerate", "numpy", "deepspeed",
                                                   "ffcv", "submitit", "visiontrain")},
        # Packages whose versions differ from the lock's ({} = installed exactly as locked).
        "differs_from_lock": differences_from_lock(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device_type": device.type,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["device_count"] = torch.cuda.device_count()
        env["driver"] = _driver_version()
    else:
        env["device_name"] = env["cpu"]
        env["device_count"] = 1
    return env


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True, timeout=20).stdout
        return out.splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
