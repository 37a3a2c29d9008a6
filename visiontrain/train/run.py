"""One setup path: a config becomes a ready-to-train run.

train.py, launch/, the benchmarks and the tests all call `build_run` (or `train`, which
adds loading the config and fitting), so the wiring config -> runtime -> batch plan ->
backend -> data -> run dir -> model -> fine-tuning start -> trainer exists once. Every
check that can fail on user input runs before the run directory is written.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from visiontrain.config import Config, load_config
from visiontrain.data import build_data
from visiontrain.data.base import DataBundle
from visiontrain.infra.errors import UsageError
from visiontrain.models import build_model, family_of, input_size_of, spec_of
from visiontrain.models.size_check import check_image_sizes, image_sizes
from visiontrain.parallel.batch_plan import BatchPlan
from visiontrain.parallel.launchers import detect_launch
from visiontrain.parallel.runtime import Runtime, init_runtime, shutdown
from visiontrain.train import finetune, logs, run_lock, rundir
from visiontrain.train.backends import build_backend
from visiontrain.train.optim import check_trainable
from visiontrain.train.trainer import Trainer

log = logging.getLogger("visiontrain")


@dataclass
class Run:
    cfg: Config
    runtime: Runtime
    plan: BatchPlan
    data: DataBundle
    trainer: Trainer

    @property
    def run_dir(self) -> Path:
        return self.trainer.run_dir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def init_from_training_images(model: nn.Module, train, count: int = 5000) -> None:
    """Models with a data-dependent initialization (`init_from_data`, e.g. cifar_fast's patch
    whitening) get about `count` training images: the last micro-batches of epoch 0 (this
    rank's shard, as the loader delivers them). The pass runs to the epoch's end rather than
    breaking off, so no loader is left with an abandoned iterator (FFCV's keeps its thread and
    buffers). Under DDP rank 0's result is what every rank starts from (the wrapper broadcasts
    the weights); a resumed or fine-tuned run overwrites it with the loaded weights."""
    if train is None or not hasattr(model, "init_from_data"):
        return
    batches = min(train.batches_per_epoch, -(-count // train.micro_batch))
    with torch.random.fork_rng(devices=[]):  # the rest of the run draws as if this had not happened
        train.set_epoch(0, start=train.batches_per_epoch - batches)
        images = torch.cat([images for images, _ in train])
    model.init_from_data(images[:count])


def build_run(cfg: Config, model: nn.Module | None = None, runtime: Runtime | None = None) -> Run:
    """Join the process group, build loaders, model and trainer, and resume from the run dir if it has
    checkpoints. `model` replaces the configured architecture (tests); `runtime` reuses a process group."""
    plan = BatchPlan.for_world(cfg.train, runtime.world_size if runtime else detect_launch().world_size)
    resuming = rundir.check_run_dir(cfg)
    runtime = runtime or init_runtime(cfg.run.device, cfg.parallel)
    backend = build_backend(cfg, runtime, plan)  # DeepSpeed's JSON is checked here, before anything is written
    logs.setup_logging(runtime.rank)
    seed_everything(cfg.run.seed)
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    data = build_data(cfg, runtime, plan)
    check = None
    if cfg.adversarial.checks:  # the robustness check's training images, through the evaluation preprocessing
        from visiontrain.robust.check import RobustCheck

        check = RobustCheck(cfg, runtime, plan, data.train_samples)
    if model is None:
        model = build_model(cfg.model)
        if family_of(cfg.model.name) is not None:  # a library architecture: does it take the run's sizes?
            check_image_sizes(model, cfg.model.name, image_sizes(cfg), input_size_of(cfg.model.name, cfg.model.kwargs))
    init_from_training_images(model, data.train)
    init = finetune.prepare_model(model, spec_of(cfg.model.name), cfg.finetune)  # finetune.init_from, finetune.freeze
    check_trainable(model, cfg.optim)
    run_dir = rundir.open_run_dir(cfg, runtime)  # the first write: every input has been checked
    log.info("run dir %s: %s on %s x %d (%s), global batch %d, %d steps/epoch", run_dir, cfg.model.name,
             runtime.device.type, runtime.world_size, runtime.launcher, plan.global_batch,
             data.train.steps_per_epoch)
    trainer = Trainer(cfg, runtime, plan, data, model, backend, run_dir, init, check)
    trainer.resume_if_possible()
    # Only now: a start that failed leaves the run's config as it was.
    rundir.save_config(cfg, runtime, resuming, pending=trainer.metrics.failure)
    return Run(cfg, runtime, plan, data, trainer)


def check(config: str | Path | None, overrides: list[str], world_size: int,
          environ: Mapping[str, str] = os.environ) -> str:
    """The checks of a run that need no process group: config, batch plan, run directory, the data and starting
    weights' paths. Raises UsageError."""
    if world_size < 1:
        raise UsageError(f"--check {world_size}: the number of processes must be >= 1")
    cfg = load_config(config, overrides, environ)
    plan = BatchPlan.for_world(cfg.train, world_size)
    resuming = rundir.check_run_dir(cfg)
    check_inputs_exist(cfg)
    return (f"ok: {cfg.model.name} on {world_size} process(es), micro-batch {plan.micro_batch} x "
            f"{plan.accum_steps} accumulation step(s); run dir {cfg.run.dir} ({'resumes' if resuming else 'new'})")


def check_inputs_exist(cfg: Config) -> None:
    """What a launch would read first, where that is cheap to check: the dataset's files (a .beton dataset's
    meta.json and splits) and the starting weights' path. UsageError (one line) naming the missing one."""
    d = cfg.data
    if d.loader == "ffcv":
        from visiontrain.data.ffcv_loader import check_dataset_files

        check_dataset_files(Path(d.path), d, ("train", "val"))
    elif d.loader != "random" and not Path(d.path).exists():
        reads = "image folders or CIFAR-10 batches" + (" or .beton files" if d.loader == "device" else "")
        raise UsageError(f"config key 'data.path' = {d.path!r} does not exist: data.loader={d.loader} reads {reads} "
                         "there")
    init = cfg.finetune.init_from
    if init and not init.startswith("hf-hub:") and not Path(init).exists():
        raise UsageError(f"config key 'finetune.init_from' = {init!r} does not exist: give a run directory or a "
                         "weights file")


def train(config: str | Path | None, overrides: list[str], environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Load the config (launcher settings included), train to the end, leave the process group.

    Returns summary.json's contents (on rank 0; {} on the others). Raises UsageError (bad
    input), TrainingFailed, or Preempted (stopped on a signal after a checkpoint; its
    `signal` names it).
    """
    cfg = load_config(config, overrides, environ)
    try:
        run = build_run(cfg)
        summary = run.trainer.fit()
        if run.runtime.is_main:
            log.info("done: val top1 %.2f%% (best %.2f%% at epoch %d); run dir %s", summary["final"]["top1"],
                     summary["best_top1"], summary["best_epoch"], run.run_dir)
        return summary
    finally:
        run_lock.release_all()
        shutdown()
