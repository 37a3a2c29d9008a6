"""`python train.py` / `visiontrain train`: train an image classifier.

    python train.py [-c CONFIG.yaml] [section.key=value ...]
    torchrun --nproc_per_node N train.py -c CONFIG.yaml ...
    accelerate launch train.py -c CONFIG.yaml ...
    srun python train.py -c CONFIG.yaml ...     (one SLURM task per GPU; see slurm/)
    python train.py --check N -c CONFIG.yaml ... && torchrun --nproc_per_node N train.py -c CONFIG.yaml ...

With no -c: CIFAR-10, ResNet-18 (CIFAR stem). Starting in a run directory that holds
checkpoints resumes it. Fine-tuning: finetune.init_from=RUN_DIR|FILE [finetune.freeze=...].
Exit codes: 0 done, 2 bad config or input, 3 stopped on SIGUSR1/SIGTERM with a
checkpoint (run it again to resume), 1 failure.
"""

from __future__ import annotations

import argparse


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", help="YAML config file (defaults: CIFAR-10 ResNet-18)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    parser.add_argument("--check", type=int, metavar="NPROC", dest="check_nproc",
                        help="only check the config and run dir for NPROC processes (exit 0 or 2) and stop: run it "
                             "before torchrun or accelerate launch, which report a worker's bad config as a crash")
    return parser.parse_intermixed_args(argv)  # overrides may stand before and after -c


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Imported after argument parsing: `--help` answers at once.
    from visiontrain.train.run import check, train

    if args.check_nproc is not None:
        print(check(args.config, args.overrides, args.check_nproc))
    else:
        train(args.config, args.overrides)
    return 0

