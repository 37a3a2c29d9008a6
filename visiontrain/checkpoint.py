"""Atomic checkpoint files, auto-resume with fallback, and export of plain weights.

Layout under `<run dir>/checkpoints/`: `step_000001234.pt` (the last `keep_last`
periodic checkpoints) and `best.pt` (highest val top-1). Every file is written to a
temporary name and renamed, so a crash never leaves a half file under a final name.
Loading uses `torch.load(weights_only=True)`: a checkpoint is never unpickled as code.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from visiontrain.errors import UsageError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CorruptCheckpoint(Exception):
    pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_replace(tmp: Path, final: Path) -> None:
    """Durably move a finished temporary file to its final name, with the usual permissions."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create files 0600
    os.replace(tmp, final)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        _fsync_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint dict; `CorruptCheckpoint` naming the file if it cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, bit rot: all mean "unusable"
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CorruptCheckpoint(f"checkpoint {path} is not a visiontrain checkpoint (format {FORMAT_VERSION})")
    return state


class CheckpointStore:
    def __init__(self, run_dir: Path, keep_last: int):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    def periodic(self) -> list[Path]:
        """Periodic checkpoints, newest first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _STEP_FILE.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def has_any(self) -> bool:
        return bool(self.periodic()) or self.best_path.is_file()

    def save(self, state: dict[str, Any], step: int, periodic: bool, best: bool) -> Path | None:
        """Write `state` as the step's periodic checkpoint and/or as best.pt; prune old ones."""
        if not (periodic or best):
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {"format_version": FORMAT_VERSION, **state}
        final = self.dir / f"step_{step:09d}.pt" if periodic else self.best_path
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        try:
            torch.save(state, tmp)
            if periodic and best:
                # One write, two names: hard-link the finished file as best.pt.
                best_tmp = self.best_path.with_name(f".best.pt.tmp{os.getpid()}")
                best_tmp.unlink(missing_ok=True)
                os.link(tmp, best_tmp)
                os.replace(best_tmp, self.best_path)
            _fsync_replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        for old in self.periodic()[self.keep_last:]:
            old.unlink(missing_ok=True)
        return final

    def load_latest(self) -> tuple[dict[str, Any], Path] | None:
        """The newest readable checkpoint (periodic first, then best.pt), or None if there are none.

        Unreadable files are skipped with a warning naming them; if every file is unreadable
        the run cannot continue, which is a UsageError naming them all.
        """
        candidates = self.periodic() + ([self.best_path] if self.best_path.is_file() else [])
        if not candidates:
            return None
        bad = []
        for path in sorted(candidates, key=_step_of, reverse=True):
            try:
                state = load_checkpoint(path)
            except CorruptCheckpoint as err:
                bad.append(path)
                log.warning("%s; falling back to the previous checkpoint", err)
                continue
            return state, path
        raise UsageError(
            f"no readable checkpoint in {self.dir} (unreadable: {', '.join(str(p) for p in bad)}); "
            "move them away to start over, or use another run.dir"
        )


def _step_of(path: Path) -> int:
    match = _STEP_FILE.match(path.name)
    if match:
        return int(match.group(1))
    try:  # best.pt: its step is inside (mmap: only that value is read); an unreadable one sorts last
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["trainer"]["step"])
    except Exception:
        return -1


def plain_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies: what safetensors and torchvision models accept."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def export_weights(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(state_dict, str(tmp), metadata=metadata)
        _fsync_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
