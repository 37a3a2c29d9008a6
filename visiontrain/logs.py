"""Everything a run reports: console logging, metrics.jsonl, TensorBoard, progress bars,
summary.json with the environment, and the curves PNG. Rank 0 writes; other ranks
only print warnings (prefixed with their rank).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

EVENT_KEYS = ("event", "epoch", "step", "lr", "loss", "top1", "top5", "img_per_s", "world_size", "time")


def setup_logging(rank: int) -> None:
    fmt = "%(message)s" if rank == 0 else f"[rank {rank}] %(levelname)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    for noisy in ("accelerate", "torch", "PIL", "matplotlib", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class MetricsLog:
    """Append-only metrics.jsonl; one JSON object per event, flushed as written."""

    def __init__(self, path: Path, world_size: int, enabled: bool):
        self.path, self.world_size, self.enabled = path, world_size, enabled

    def truncate_after(self, step: int) -> None:
        """On resume: drop events a killed run logged after its last checkpoint."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and _parse(line).get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, event: str, **values: Any) -> dict[str, Any]:
        record = {"event": event, "epoch": None, "step": None, "lr": None, "loss": None, "top1": None,
                  "top5": None, "img_per_s": None, "world_size": self.world_size, "time": time.time()}
        record.update(values)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        return record


def _parse(line: str) -> dict[str, Any]:
    try:
        return json.loads(line)
    except json.JSONDecodeError:  # a line cut by a kill: drop it
        return {"step": float("inf")}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class TensorBoard:
    def __init__(self, log_dir: Path, enabled: bool, purge_step: int | None):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after the checkpoint we resume from.
            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and value is not None:
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_bar(enabled: bool, total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr, mininterval=1.0, leave=False)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parents[1]
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


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def plot_curves(metrics_path: Path, out_path: Path) -> None:
    """Training loss by step and val top-1 by epoch, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r["event"] == "train"]
    val = [r for r in records if r["event"] == "val"]
    val_ema = [r for r in records if r["event"] == "val_ema"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax_loss.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val loss")
    ax_acc.plot([r["step"] for r in train], [r["top1"] for r in train], alpha=0.6, label="train top-1")
    ax_acc.plot([r["step"] for r in val], [r["top1"] for r in val], "o-", label="val top-1")
    if val_ema:
        ax_acc.plot([r["step"] for r in val_ema], [r["top1"] for r in val_ema], "s--", label="val top-1 (EMA)")
    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("optimizer step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
