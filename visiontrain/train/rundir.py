"""The run directory: whether to start, resume or refuse, and the resolved config.yaml.

Layout: config.yaml, metrics.jsonl, tb/, checkpoints/, curves.png, summary.json,
weights.safetensors (+ weights_ema.safetensors with EMA), ranks/ (sample-id audits).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from visiontrain.checkpoint import CheckpointStore
from visiontrain.config import Config, load_config, to_yaml
from visiontrain.infra import fileio
from visiontrain.infra.errors import UsageError
from visiontrain.parallel.runtime import Runtime, all_ranks_agree, raise_if_any_rank_failed
from visiontrain.train.run_lock import RunLock

log = logging.getLogger(__name__)


# Keys whose change makes a run's checkpoints unloadable: tensor shapes or checkpoint layout.
# What a checkpoint's tensors and parameter groups depend on: a resume with another value is refused before
# anything is written (model.kwargs may change shapes, optim.layer_decay the parameter groups).
CHECKPOINT_SHAPE_KEYS = ("model.name", "model.num_classes", "model.width", "model.kwargs", "optim.name",
                         "optim.layer_decay", "parallel.strategy")


def check_run_dir(cfg: Config) -> bool:
    """Raise UsageError if the run dir may not be used; True if it holds checkpoints to resume.
    Reads only: nothing is written before every input has been checked."""
    path = Path(cfg.run.dir)
    _check_name_lengths(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"run.dir={path} exists and is not a directory")
    _check_writable(path)
    occupied = path.is_dir() and any(path.iterdir())
    if occupied and not cfg.run.resume:
        raise UsageError(
            f"run.dir={path} already exists and run.resume=false: choose another run.dir, "
            "or set run.resume=true to continue it"
        )
    resuming = CheckpointStore(path, cfg.checkpoint.keep_last).has_any()
    if resuming:
        _check_same_shape(cfg, path)
    return resuming


# Room below run.dir for the longest path the run writes (checkpoints/.step_000000123.pt.<pid>-<hex>.tmp, ...).
ROOM_BELOW = 128


def _check_name_lengths(path: Path) -> None:
    """Names the file system would refuse later, with "File name too long", as one line now."""
    existing = path.absolute()
    while not os.path.lexists(existing) and existing != existing.parent:  # lexists is False for a name too long
        existing = existing.parent
    name_max = _pathconf(existing, "PC_NAME_MAX", 255)
    path_max = _pathconf(existing, "PC_PATH_MAX", 4096)
    longest = max((len(os.fsencode(part)) for part in path.absolute().parts), default=0)
    if longest > name_max:
        raise UsageError(f"run.dir={path} is too long for this file system (at most {name_max} bytes per name, "
                         f"one has {longest}); choose a shorter run.dir")
    length = len(os.fsencode(str(path.absolute()))) + ROOM_BELOW
    if length > path_max:
        raise UsageError(f"run.dir={path} is too long for this file system (at most {path_max} bytes in all, "
                         f"{ROOM_BELOW} of them for the files inside); choose a shorter run.dir")


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


def _check_writable(path: Path) -> None:
    """run.dir, or the nearest part of it that exists, must be a directory this process can write in."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"run.dir={path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"run.dir={path} cannot be written: {existing} is read-only or not writable by this user")


def _check_same_shape(cfg: Config, path: Path) -> None:
    saved_file = path / "config.yaml"
    if not saved_file.is_file():
        return
    try:
        saved = load_config(saved_file)
    except UsageError as err:
        raise UsageError(f"the run's own {saved_file} no longer loads ({err}); move it aside to resume with "
                         "the config given now") from None

    def value(c: Config, key: str):
        section, name = key.split(".")
        return getattr(getattr(c, section), name)

    differing = [f"{key} {value(saved, key)!r} there, {value(cfg, key)!r} now" for key in CHECKPOINT_SHAPE_KEYS
                 if value(saved, key) != value(cfg, key)]
    if differing:
        raise UsageError(f"run.dir={path} holds checkpoints of another configuration ({'; '.join(differing)}): "
                         f"choose a new run.dir, or start from its weights with finetune.init_from={path}")


def open_run_dir(cfg: Config, runtime: Runtime) -> Path:
    """Create the run dir, take its writer lock and remove a killed writer's temporaries (rank 0); every rank
    waits for it. The config is saved by `save_config`, once the start has succeeded."""
    path = Path(cfg.run.dir)
    runtime.barrier()  # every rank has run check_run_dir before anything is written
    refusal = None
    if runtime.is_main:
        try:
            path.mkdir(parents=True, exist_ok=True)
            refusal = RunLock(path).acquire()  # one writer per run directory (train/run_lock.py)
        except OSError as err:  # said by every rank below, not raised here while the others wait
            refusal = f"run.dir={path} cannot be locked for writing: {err}"
    if not all_ranks_agree(refusal is None, runtime.world_size, runtime.device):
        raise UsageError(refusal or f"run.dir={path} is in use by another run (rank 0 says which)")
    error = None
    if runtime.is_main:
        store = CheckpointStore(path, cfg.checkpoint.keep_last)
        try:
            # Under the writer lock every temporary is a killed writer's, on whichever node it ran.
            for leftover in (fileio.clean_leftovers(path, owned=True) + fileio.clean_leftovers(store.dir, owned=True)
                             + store.remove_unfinished()):
                log.info("removed %s, left by a run that was killed while writing it", leftover)
        except Exception as err:
            error = err
    raise_if_any_rank_failed(error, runtime, "preparing the run directory")
    return path


def save_config(cfg: Config, runtime: Runtime, resuming: bool, pending: BaseException | None = None) -> None:
    """Save the resolved config.yaml (rank 0) once the run has started: its checkpoint loaded, if any. A start
    that failed leaves the previous config.yaml as it was. `pending`: rank 0's failure to open its logs, agreed
    on here with the config's own."""
    error = pending
    if runtime.is_main and error is None:
        path = Path(cfg.run.dir)
        config_file = path / "config.yaml"
        text = to_yaml(cfg)
        try:
            if resuming and config_file.is_file() and config_file.read_text() != text:
                log.warning("the config differs from the one this run started with; "
                            "the previous one is kept as config.previous.yaml")
                # A second name for the old file, not a rename: config.yaml never goes missing.
                fileio.link(config_file, path / "config.previous.yaml")
            fileio.write_text(config_file, text)
        except Exception as err:  # a full disk: said on every rank, none waits for rank 0 in the first step
            error = err
    raise_if_any_rank_failed(error, runtime, "writing config.yaml or opening its logs")
