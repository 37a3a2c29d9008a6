"""The run directory: whether to start, resume or refuse, and the resolved config.yaml.

Layout: config.yaml, metrics.jsonl, tb/, checkpoints/, curves.png, summary.json,
weights.safetensors (+ weights_ema.safetensors with EMA), ranks/ (sample-id audits).
"""

from __future__ import annotations

import logging
from pathlib import Path

from visiontrain import fileio
from visiontrain.checkpoint import CheckpointStore
from visiontrain.config import Config, to_yaml
from visiontrain.dist import Runtime
from visiontrain.errors import UsageError

log = logging.getLogger(__name__)


def check_run_dir(cfg: Config) -> bool:
    """Raise UsageError if the run dir may not be used; True if it holds checkpoints to resume."""
    path = Path(cfg.run.dir)
    if path.exists() and not path.is_dir():
        raise UsageError(f"run.dir={path} exists and is not a directory")
    occupied = path.is_dir() and any(path.iterdir())
    if occupied and not cfg.run.resume:
        raise UsageError(
            f"run.dir={path} already exists and run.resume=false: choose another run.dir, "
            "or set run.resume=true to continue it"
        )
    return CheckpointStore(path, cfg.checkpoint.keep_last).has_any()


def write_config(cfg: Config, runtime: Runtime, resuming: bool) -> Path:
    """Create the run dir and save the resolved config (rank 0); every rank waits for it."""
    path = Path(cfg.run.dir)
    runtime.barrier()  # every rank has run check_run_dir before anything is written
    if runtime.is_main:
        path.mkdir(parents=True, exist_ok=True)
        config_file = path / "config.yaml"
        text = to_yaml(cfg)
        if resuming and config_file.is_file() and config_file.read_text() != text:
            log.warning("the config differs from the one this run started with; "
                        "the previous one is kept as config.previous.yaml")
            # A second name for the old file, not a rename: config.yaml never goes missing.
            fileio.link(config_file, path / "config.previous.yaml")
        fileio.write_text(config_file, text)
    runtime.barrier()
    return path
