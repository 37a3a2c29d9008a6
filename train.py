"""Train an image classifier.

    python train.py [-c CONFIG.yaml] [section.key=value ...]
    torchrun --nproc_per_node N train.py -c CONFIG.yaml ...
    accelerate launch train.py -c CONFIG.yaml ...
    srun python train.py -c CONFIG.yaml ...     (one SLURM task per GPU; see slurm/)

With no -c: CIFAR-10, ResNet-18 (CIFAR stem). Starting in a run directory that holds
checkpoints resumes it. Fine-tuning: finetune.init_from=RUN_DIR|FILE [finetune.freeze=...].
Exit codes: 0 done, 2 bad config or input, 3 stopped on SIGUSR1/SIGTERM with a
checkpoint (run it again to resume), 1 failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from visiontrain.errors import run_cli

log = logging.getLogger("visiontrain")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", help="YAML config file (defaults: CIFAR-10 ResNet-18)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Imports after argument parsing: `--help` and config errors answer at once.
    from visiontrain import backends, config, dist, finetune, logs, rundir
    from visiontrain.data import build_data
    from visiontrain.engine import Trainer
    from visiontrain.models import build_model

    cfg = config.load_config(args.config, args.overrides)
    dist.check_launcher(os.environ, cfg.train.precision, cfg.model.compile)
    dist.apply_launcher_backend(cfg, os.environ)
    config.validate(cfg)
    micro_batch = config.validate_for_world(cfg, dist.detect_launch().world_size)
    resuming = rundir.check_run_dir(cfg)

    runtime = dist.init_runtime(cfg.run.device, cfg.backend.find_unused_parameters,
                                use_accelerate=cfg.backend.name == "ddp")
    try:
        backends.resolve_deepspeed_config(cfg, runtime, micro_batch)  # DeepSpeed's checks, before writing
        logs.setup_logging(runtime.rank)
        dist.seed_everything(cfg.run.seed)
        if cfg.run.deterministic:
            import torch

            torch.use_deterministic_algorithms(True, warn_only=True)
        data = build_data(cfg, runtime, micro_batch)
        run_dir = rundir.write_config(cfg, runtime, resuming)
        log.info("run dir %s: %s on %s x %d (%s), global batch %d, %d steps/epoch",
                 run_dir, cfg.model.name, runtime.device.type, runtime.world_size, runtime.launcher,
                 cfg.train.batch_size, data.train.steps_per_epoch)

        model = build_model(cfg.model)
        init = finetune.prepare_model(model, cfg.finetune)  # finetune.init_from, finetune.freeze
        trainer = Trainer(cfg, runtime, data, model, run_dir, init)
        trainer.resume_if_possible()
        summary = trainer.fit()
        if runtime.is_main:
            final = summary["final"]
            log.info("done: val top1 %.2f%% (best %.2f%% at epoch %d); run dir %s",
                     final["top1"], summary["best_top1"], summary["best_epoch"], run_dir)
    finally:
        dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
