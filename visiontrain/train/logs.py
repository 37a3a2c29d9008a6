"""What a run reports while it runs: console logging, metrics.jsonl, TensorBoard, progress
bars. Rank 0 writes; other ranks only print warnings (prefixed with their rank).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from visiontrain.infra import fileio

EVENT_KEYS = ("event", "epoch", "step", "lr", "loss", "top1", "top5", "img_per_s", "world_size", "time")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is logged: a caller that replaces it (a test
    capturing output, an in-process tool) gets the lines, and no stale stream is ever written to."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(rank: int) -> None:
    fmt = "%(message)s" if rank == 0 else f"[rank {rank}] %(levelname)s: %(message)s"
    handler = _CurrentStderr()
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
        # The first write that failed (a full disk), kept for the trainer to raise where every rank agrees on
        # it (its next checkpoint): raised here, on rank 0 alone, the others would wait in the next step.
        self.failure: OSError | None = None

    def truncate_after(self, step: int) -> None:
        """On resume: drop events a killed run logged after its last checkpoint."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and _parse(line).get("step", 0) <= step]
        fileio.write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, event: str, **values: Any) -> dict[str, Any]:
        record = {"event": event, "epoch": None, "step": None, "lr": None, "loss": None, "top1": None,
                  "top5": None, "img_per_s": None, "world_size": self.world_size, "time": time.time()}
        record.update(values)
        if self.enabled and self.failure is None:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as err:  # a flush names no file: the path is ours to give
                self.failure = err if err.filename else OSError(err.errno, err.strerror, str(self.path))
        return record


def _parse(line: str) -> dict[str, Any]:
    try:
        return json.loads(line)
    except json.JSONDecodeError:  # a line cut by a kill: drop it
        return {"step": float("inf")}


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
