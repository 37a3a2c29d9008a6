"""Throughput benchmarks.

    python -m visiontrain bench step  [-c CONFIG] [key=value ...] [--sweep key=a,b ...] [--nproc N] [--out DIR]
    python -m visiontrain bench e2e   [-c CONFIG] [key=value ...] [--sweep key=a,b ...] [--nproc N] [--out DIR]
    python -m visiontrain bench scaling --nproc 1,2,4 [--of step|e2e] [-c CONFIG] [key=value ...] [--out DIR]
    python -m visiontrain bench overhead [--steps 10] [--rounds 12] [section.key=value ...]
    python -m visiontrain bench loader [--workers 2] [--epochs 3] [--res 160 192] [--out DIR]
    python -m visiontrain bench prep [--samples 8000] [--workers 1 2] [--repeats 2] [--out DIR]
    python -m visiontrain bench recipes [--configs fast resnet9 resnet18] [--seeds fast=20 ...] [--nproc N]
    python -m visiontrain bench robustness --data DIR [--train-images 10000] [--epochs 6] [--collapse-epsilon 16/255]
    python -m visiontrain bench pruning --data DIR [--spec SWEEP.yaml] [--train-images 5000] [--trials 9] [--epochs 9]
    python -m visiontrain bench memory [--model resnet50] [--nproc 2] [--optim sgd] [--strategies ddp zero1 ...]
    python -m visiontrain bench models [--family timm torchvision] [--match PATTERN] [--max-params 100] [--out DIR]
    python -m visiontrain bench deploy RUN_DIR|MODEL.onnx [--onnx FILE ...] [--compile] [--threads 1 2] [--out DIR]
    python -m visiontrain bench project [RESULTS ...] [--rate MODEL:RES=IMG_S ...] [--of e2e|step] [--gpus 8]
                                        [--efficiency 0.9] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from visiontrain.bench.compatibility import add_arguments as add_compatibility_arguments
from visiontrain.bench.deploy import add_arguments as add_deploy_arguments
from visiontrain.bench.evidence import add_arguments as add_evidence_arguments
from visiontrain.bench.projection import add_arguments as add_projection_arguments
from visiontrain.bench.pruning import add_arguments as add_pruning_arguments
from visiontrain.bench.recipes import add_arguments as add_recipe_arguments
from visiontrain.bench.robustness import add_arguments as add_robustness_arguments
from visiontrain.infra.errors import ArgumentParser, UsageError, run_cli
from visiontrain.infra.paths import SOURCE_TREE


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m visiontrain bench", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    overhead = sub.add_parser("overhead", help="train.py's trainer vs a bare PyTorch loop, same model and batches")
    overhead.add_argument("--steps", type=int, default=10, help="steps per round")
    overhead.add_argument("--rounds", type=int, default=12, help="alternating rounds (plus one warm-up)")
    overhead.add_argument("overrides", nargs="*", metavar="section.key=value")
    loader = sub.add_parser("loader", help="FFCV vs torchvision data loading on the shared real images")
    loader.add_argument("--shared", type=Path, default=SOURCE_TREE.parent / "shared" / "datasets")
    loader.add_argument("--work", type=Path, default=Path("runs/bench_loader_data"), help="prepared data (reused)")
    loader.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    loader.add_argument("--epochs", type=int, default=3, help="timed epochs per loader (after one warm-up)")
    loader.add_argument("--imagenet-samples", type=int, default=5000)
    loader.add_argument("--res", type=int, nargs="+", default=[160, 192])
    loader.add_argument("--out", type=Path, help="write loader_results.json here")
    loader.add_argument("--augment", default="", metavar="POLICY",
                        help="also time FFCV with this augment.auto policy (e.g. rand-m9-n2) against FFCV without it "
                             "and the stock torchvision pipeline with RandAugment, and each op's cost")
    writer = sub.add_parser("prep", help="visiontrain prep imagenet vs FFCV's own writer on the shared photos")
    writer.add_argument("--shared", type=Path, default=SOURCE_TREE.parent / "shared" / "datasets")
    writer.add_argument("--work", type=Path, default=Path("runs/bench_loader_data"), help="prepared data (reused)")
    writer.add_argument("--samples", type=int, default=8000, help="training images (replicated photos)")
    writer.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    writer.add_argument("--repeats", type=int, default=2, help="timed runs of each writer per worker count")
    writer.add_argument("--out", type=Path, help="write prep_results.json here")
    memory = sub.add_parser("memory", help="training-state memory per rank: DDP vs DeepSpeed ZeRO 1/2/3")
    memory.add_argument("--model", default="resnet50")
    memory.add_argument("--nproc", type=int, default=2)
    memory.add_argument("--image-size", type=int, default=64)
    memory.add_argument("--batch", type=int, default=4, help="images per rank per step")
    memory.add_argument("--steps", type=int, default=3)
    memory.add_argument("--strategies", nargs="+", default=["ddp", "zero1", "zero2", "zero3"])
    memory.add_argument("--optim", default="sgd", choices=("sgd", "adamw"))
    project = sub.add_parser("project", help="ImageNet time to train of the configs/imagenet schedules, projected "
                                             "from measured per-GPU rates")
    add_projection_arguments(project)
    evidence = sub.add_parser("evidence", help="the README's GPU figures in one short call, each part within a budget "
                              "(scripts/gpu_evidence.sh installs the bundle first)")
    add_evidence_arguments(evidence)
    models = sub.add_parser("models", help="which timm and torchvision architectures train, resume exactly and "
                                           "export to ONNX (the compatibility table)")
    add_compatibility_arguments(models)
    deploy = sub.add_parser("deploy", help="a run's fp32 and int8 ONNX exports and its PyTorch model side by side: "
                                           "latency, throughput, file size, top-1")
    add_deploy_arguments(deploy)
    recipes = sub.add_parser("recipes", help="the CIFAR-10 recipe table: val top-1 over seeds, training seconds")
    add_recipe_arguments(recipes)
    robustness = sub.add_parser("robustness", help="standard, FGSM-RS, N-FGSM and PGD-7 training: clean and "
                                                   "robust top-1, training time")
    add_robustness_arguments(robustness)
    pruning = sub.add_parser("pruning", help="a sweep with successive halving vs full-budget random search: best "
                                             "val top-1 against CPU hours")
    add_pruning_arguments(pruning)
    for name, help_text in (("step", "training steps on batches already on the device: the compute ceiling"),
                            ("e2e", "the configured loader + training steps, as train.py runs them"),
                            ("scaling", "step or e2e at several process counts: images/s and efficiency vs linear")):
        throughput = sub.add_parser(name, help=help_text)
        throughput.add_argument("-c", "--config", help="YAML config (train.py's defaults otherwise)")
        throughput.add_argument("overrides", nargs="*", metavar="section.key=value",
                                help="fixed overrides; batch_per_device=N (images per device per step); "
                                     "strategy=ddp|zero0..zero3")
        throughput.add_argument("--sweep", nargs="+", default=[], metavar="section.key=v1,v2",
                                help="measure every combination of these values")
        if name == "scaling":
            throughput.add_argument("--of", dest="inner", choices=("step", "e2e"), default="step")
            throughput.add_argument("--nproc", default="1,2", help="process counts, comma-separated (default 1,2)")
        else:
            throughput.add_argument("--nproc", default="1", help="processes (GPUs) per point (default 1)")
        throughput.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
        throughput.add_argument("--repeats", type=int, default=5, help="timed repeats per point (median reported)")
        throughput.add_argument("--warmup-steps", type=int, default=10, help="untimed first steps (compilation)")
        throughput.add_argument("--no-bare", dest="bare", action="store_false",
                                help="step mode: skip the bare PyTorch loop reference")
        throughput.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs' table)")
        throughput.add_argument("--out", type=Path, help=f"output directory (default runs/bench/{name})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if args.mode in ("step", "e2e", "scaling"):
        return throughput_main(args, argv)
    if args.mode == "project":
        from visiontrain.bench import projection

        return projection.main(args, argv)
    if args.mode == "evidence":
        from visiontrain.bench import evidence

        return evidence.main(args)
    if args.mode == "models":
        from visiontrain.bench import compatibility

        return compatibility.main(args)
    if args.mode == "deploy":
        from visiontrain.bench import deploy as deploy_bench

        return deploy_bench.main(args, argv)
    if args.mode == "recipes":
        from visiontrain.bench import recipes as recipe_table

        return recipe_table.main(args, argv)
    if args.mode == "pruning":
        from visiontrain.bench.pruning import run as run_pruning

        print(run_pruning(args, "python -m visiontrain bench " + " ".join(argv))["markdown"], end="")
        return 0
    if args.mode == "robustness":
        from visiontrain.bench.robustness import run_table

        print(run_table(args, "python -m visiontrain bench " + " ".join(argv))["markdown"], end="")
        return 0
    if args.mode == "overhead":
        from visiontrain.bench.overhead import measure, report

        print(report(measure(args.overrides, args.steps, args.rounds)))
    elif args.mode == "memory":
        from visiontrain.bench import memory as memory_bench

        results = memory_bench.run(args.model, args.nproc, args.image_size, args.batch, args.steps, args.strategies,
                                   args.optim)
        print(memory_bench.report(results, args.model, args.nproc, args.optim))
    elif args.mode == "prep":
        from visiontrain.bench import prep_writer

        if not (args.shared / "imagenet-sample-200.tar").is_file():
            raise UsageError(f"--shared {args.shared} does not hold imagenet-sample-200.tar")
        if args.samples < 1 or args.repeats < 1 or min(args.workers) < 1:
            raise UsageError("--samples, --repeats and --workers must be >= 1")
        result = prep_writer.run(args.shared, args.work, args.samples, args.workers, args.repeats)
        if args.out is not None:
            prep_writer.write(args.out, result)
        print(prep_writer.report(result))
    else:
        from visiontrain.bench import loader as loader_bench

        if args.augment:
            from visiontrain.data.ops.auto_augment import parse_policy

            parse_policy(args.augment, "--augment")  # before minutes of data preparation
        rows = loader_bench.run(args.shared, args.work, args.workers, args.epochs, args.imagenet_samples, args.res,
                                args.out, args.augment)
        print(loader_bench.report(rows))
    return 0


def throughput_main(args: argparse.Namespace, argv: list[str]) -> int:
    from visiontrain.bench import results, runner
    from visiontrain.bench.sweep import expand
    from visiontrain.infra.errors import UsageError

    for flag, value in (("--steps", args.steps), ("--repeats", args.repeats)):
        if value < 1:
            raise UsageError(f"{flag} {value} is invalid: at least 1 is needed")
    if args.warmup_steps < 0:
        raise UsageError(f"--warmup-steps {args.warmup_steps} is invalid: 0 or more")
    inner = args.inner if args.mode == "scaling" else args.mode
    nprocs = runner.parse_nproc(args.nproc)
    if args.mode != "scaling" and len(nprocs) > 1:
        raise UsageError(f"--nproc {args.nproc!r}: {args.mode} takes one process count; "
                         "use the scaling mode for several")
    points = expand(args.overrides, args.sweep)
    runner.check_points(args.config, inner, points, nprocs)
    out = args.out or Path("runs/bench") / args.mode
    records = runner.run(inner, args.config, points, nprocs, args.steps, args.repeats, args.warmup_steps, args.bare,
                         args.peak_tflops)
    if args.mode == "scaling":
        runner.add_scaling_efficiency(records)
    settings = {"inner_mode": inner, "config": args.config, "overrides": args.overrides, "sweep": args.sweep,
                "nproc": nprocs, "steps": args.steps, "repeats": args.repeats, "warmup_steps": args.warmup_steps,
                "bare": args.bare and inner == "step", "peak_tflops": args.peak_tflops,
                "threads_per_process": int(os.environ.get("OMP_NUM_THREADS", runner.threads_per_process(nprocs)))}
    doc = results.write(out, args.mode, "python -m visiontrain bench " + " ".join(argv), runner.environment(),
                        settings, records)
    print(results.table(doc["points"]))
    print(f"results: {out}/results.json, results.md, *.png")
    failed = [r for r in records if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
