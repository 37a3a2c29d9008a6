"""The checkpoint store: atomic checkpoint files, pruning, and auto-resume with fallback.

Layout under `<run dir>/checkpoints/`: `step_000001234.pt` (the last `keep_last`
periodic checkpoints) and `best.pt` (best by `train.monitor`); under DeepSpeed the same names
without `.pt` are DeepSpeed's sharded checkpoint directories. Every checkpoint is
written under a temporary name and renamed, so a crash never leaves a half checkpoint
under a final name. Our files load with `torch.load(weights_only=True)`: a checkpoint
is never unpickled as code (DeepSpeed's directories are read by DeepSpeed). Plain
weights (weights.safetensors) are visiontrain.checkpoint.weights' concern; `python -m
visiontrain.checkpoint export` (in __main__.py) consolidates a run's checkpoint into them.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from visiontrain.infra import fileio
from visiontrain.infra.errors import UsageError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_STEP_ENTRY = re.compile(r"^step_(\d+)(\.pt)?$")
_UNFINISHED_DIR = re.compile(r"^\.step_\d+\.tmp$")  # DeepSpeed's shards of a save in progress


class CorruptCheckpoint(Exception):
    pass


# Besides tensors, DeepSpeed's checkpoint files (ZeRO optimizer states) hold these objects:
# allowed by name, everything else refused, as for our own files.
DEEPSPEED_STATE_CLASSES = (
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
)


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Inside, every torch.load is weights_only, also DeepSpeed's own readers, which ask for full
    unpickling: a crafted checkpoint file cannot run code. DeepSpeed's state classes are allowed."""
    allowed = []
    for name in DEEPSPEED_STATE_CLASSES:
        module, _, attribute = name.rpartition(".")
        with contextlib.suppress(ImportError, AttributeError):
            allowed.append(getattr(importlib.import_module(module), attribute))
    saved = {key: os.environ.pop(key, None) for key in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD",
                                                         "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"  # read by torch.load at every call
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


MANIFEST = "visiontrain.json"  # inside a DeepSpeed checkpoint directory: step, world size, ZeRO stage


def write_manifest(checkpoint_dir: Path, step: int, world_size: int, zero_stage: int) -> None:
    fileio.write_json(checkpoint_dir / MANIFEST, {"step": step, "world_size": world_size, "zero_stage": zero_stage})


def read_manifest(checkpoint_dir: Path) -> dict[str, Any]:
    """A DeepSpeed checkpoint directory's manifest; `CorruptCheckpoint` if it has none."""
    try:
        return fileio.read_json(checkpoint_dir / MANIFEST, "checkpoint manifest")
    except fileio.UnreadableFile:
        raise CorruptCheckpoint(f"checkpoint {checkpoint_dir} is unreadable (no {MANIFEST})") from None


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

    def best_entry(self) -> Path | None:
        """best.pt (a file) or best (a DeepSpeed directory), if there is one."""
        for path in (self.best_path, self.dir / "best"):
            if path.exists():
                return path
        return None

    def periodic(self) -> list[Path]:
        """Periodic checkpoints (files or directories), newest first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _STEP_ENTRY.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def has_any(self) -> bool:
        return bool(self.periodic()) or self.best_entry() is not None

    def remove_unfinished(self) -> list[str]:
        """DeepSpeed checkpoint directories whose writing was cut short (`.step_N.tmp`); call before any rank saves."""
        if not self.dir.is_dir():
            return []
        # ... and a conversion for another process count (.universal/, parallel/zero_reshard.py) cut short
        unfinished = [p for p in self.dir.iterdir() if _UNFINISHED_DIR.match(p.name) or p.name == ".universal"]
        for path in unfinished:
            shutil.rmtree(path, ignore_errors=True)
        return [p.name for p in unfinished]

    def candidates(self) -> list[Path]:
        """Every checkpoint to try on resume, newest step first (best placed by its step)."""
        entries = self.periodic()
        best = self.best_entry()
        if best is not None:
            entries.append(best)
        return sorted(entries, key=_step_of, reverse=True)

    def save(self, state: dict[str, Any], step: int, periodic: bool, best: bool) -> Path | None:
        """Write `state` as the step's periodic checkpoint and/or as best.pt; prune old ones."""
        if not (periodic or best):
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {"format_version": FORMAT_VERSION, **state}
        final = self.dir / f"step_{step:09d}.pt" if periodic else self.best_path
        with fileio.atomic_path(final) as tmp:
            torch.save(state, tmp)
        if periodic and best:
            # One write, two names; linked only once the file is synced, so best.pt is never a half file.
            fileio.link(final, self.best_path)
        self._prune()
        return final

    def commit_dir(self, tmp: Path, step: int, periodic: bool, best: bool) -> Path:
        """Move a finished checkpoint directory into place (as step_N and/or best); prune old ones."""
        final = self.dir / f"step_{step:09d}" if periodic else self.dir / "best"
        if best:
            with fileio.atomic_dir(self.dir / "best") as staged:
                # hard links: no second copy on disk
                shutil.copytree(tmp, staged, copy_function=os.link, dirs_exist_ok=True)
        if periodic:
            fileio.replace_dir(tmp, final)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        self._prune()
        return final

    def _prune(self) -> None:
        for old in self.periodic()[self.keep_last:]:
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)

    def load_latest(self, loader: Callable[[Path], dict[str, Any]] = None,
                    agree: Callable[[bool], bool] = lambda ok: ok) -> tuple[dict[str, Any], Path] | None:
        """The newest loadable checkpoint, or None if there are none.

        `loader` reads (and may apply) one checkpoint, raising CorruptCheckpoint; `agree`
        combines every rank's success, so that all ranks fall back together. Unreadable
        checkpoints are skipped with a warning naming them; if none is readable the run
        cannot continue, which is a UsageError naming them all.
        """
        loader = loader or load_checkpoint
        candidates = self.candidates()
        if not candidates:
            return None
        bad = []
        for path in candidates:
            state, error = None, None
            try:
                state = loader(path)
            except CorruptCheckpoint as err:
                error = err
            if agree(error is None):
                return state, path
            bad.append(path)
            log.warning("%s; falling back to the previous checkpoint", error or f"checkpoint {path} is unreadable on "
                        "another rank")
        raise UsageError(
            f"no readable checkpoint in {self.dir} (unreadable: {', '.join(str(p) for p in bad)}); "
            "move them away to start over, or use another run.dir"
        )


def _step_of(path: Path) -> int:
    match = _STEP_ENTRY.match(path.name)
    if match:
        return int(match.group(1))
    try:  # best: its step is recorded inside; an unreadable one sorts last
        if path.is_dir():
            return int(read_manifest(path)["step"])
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["trainer"]["step"])
    except Exception:
        return -1
