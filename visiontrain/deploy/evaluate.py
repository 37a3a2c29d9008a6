"""Evaluate trained weights on a dataset's validation split and write a report.

    python -m visiontrain evaluate --weights RUN_DIR [--data PATH] [--tta flip|flip_translate] [--out DIR]
    python -m visiontrain evaluate --weights FILE --data PATH [-c CONFIG] [section.key=value ...]
    python -m visiontrain evaluate --weights model.onnx [--data PATH] [-c CONFIG] [section.key=value ...]
    python -m visiontrain evaluate --weights RUN_DIR --attack pgd|apgd [--epsilon 8/255] [--attack-images N]

RUN_DIR: the run's config.yaml describes the model and data (data.classes included);
its weights.safetensors (or newest checkpoint; --ema for EMA weights) are evaluated and
the report lands in RUN_DIR/eval/ with its training curves. FILE: a .safetensors
written by train.py (it records model.name/num_classes/width) or a torchvision
state dict (give model.name=... model.num_classes=...). The data loader and recipe
come from the config (data.loader=torchvision for image folders). One process.
An .onnx file (any `visiontrain export`, int8 included) runs in ONNX Runtime on the CPU: its
input contract gives the class names, evaluation size, crop and mean/std; the data settings
come from its training run's config.yaml where that still exists (else -c and overrides),
the dataset from --data or the training run's data.path.
--attack: clean and robust top-1 under an L-infinity attack of about --attack-images validation images
(visiontrain/robust/evaluation.py): PGD with --attack-steps (20) and --restarts, or APGD with the CE and
DLR losses (--attack-steps 100); epsilon in [0, 1] pixels through the model's normalization; written to
robust.json beside the report, with the time taken. PyTorch weights only.
Exit codes: 0 done, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from visiontrain.evaluate.tta import TTA_MODES
from visiontrain.infra.errors import UsageError, run_cli

log = logging.getLogger("visiontrain")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m visiontrain evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="run directory, .safetensors or torchvision .pth")
    parser.add_argument("--data", help="dataset directory (default: the run's data.path)")
    parser.add_argument("--tta", choices=TTA_MODES, default=None,
                        help="flip: average the logits of each image and its mirror; flip_translate: "
                             "also of one-pixel shifts (visiontrain/evaluate/tta.py); default: the config's train.tta "
                             "(a run directory's own)")
    parser.add_argument("--ema", action="store_true", help="a run directory's EMA weights")
    parser.add_argument("--out", type=Path, help="report directory (default: RUN_DIR/eval or FILE's eval_<name>/)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--attack", choices=("pgd", "apgd"), help="also measure robust top-1 under this attack")
    parser.add_argument("--epsilon", help="attack radius in [0, 1] pixels (8/255)")
    parser.add_argument("--attack-steps", type=int, help="attack iterations (pgd 20, apgd 100)")
    parser.add_argument("--alpha", help="pgd step size in pixels (default 2.5 x epsilon / steps)")
    parser.add_argument("--restarts", type=int, help="random starts per attack (1)")
    parser.add_argument("--attack-images", type=int,
                        help="about N validation images are attacked: every k-th, k = images // N (1000)")
    parser.add_argument("--attack-seed", type=int, help="seeds the random starts (0)")
    parser.add_argument("-c", "--config", help="config for FILE weights (model and data settings)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser.parse_args(argv)


def attack_spec(args: argparse.Namespace):
    """The --attack options as an AttackSpec (None without --attack); UsageError naming a bad one."""
    from visiontrain.robust.attacks import parse_pixels
    from visiontrain.robust.evaluation import AttackSpec

    options = ("epsilon", "attack_steps", "alpha", "restarts", "attack_images", "attack_seed")
    given = [f"--{name.replace('_', '-')}" for name in options if getattr(args, name) is not None]
    if args.attack is None:
        if given:
            raise UsageError(f"{given[0]} is an option of --attack pgd|apgd")
        return None
    args.epsilon = args.epsilon or "8/255"
    args.restarts = 1 if args.restarts is None else args.restarts
    args.attack_images = 1000 if args.attack_images is None else args.attack_images
    args.attack_seed = args.attack_seed or 0
    values = {}
    for option, text in (("--epsilon", args.epsilon), ("--alpha", args.alpha)):
        if text is None:
            continue
        try:
            values[option] = parse_pixels(text, option)
        except ValueError as err:
            raise UsageError(f"{err}") from None
        if not 0 < values[option] <= 1:
            raise UsageError(f"{option} {text} is invalid: in (0, 1] pixels, e.g. 8/255")
    if args.alpha is not None and args.attack != "pgd":
        raise UsageError("--alpha is the step size of --attack pgd (apgd adapts its own)")
    steps = args.attack_steps if args.attack_steps is not None else (20 if args.attack == "pgd" else 100)
    for option, value, low in (("--attack-steps", steps, 1), ("--restarts", args.restarts, 1),
                               ("--attack-images", args.attack_images, 1)):
        if value < low:
            raise UsageError(f"{option} {value} is invalid: must be >= {low}")
    return AttackSpec(args.attack, values["--epsilon"], steps, values.get("--alpha", 0.0), args.restarts,
                      args.attack_seed)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} is invalid: must be >= 1")
    spec = attack_spec(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from visiontrain.data import build_data
    from visiontrain.deploy.inference import TorchClassifier
    from visiontrain.deploy.trained import load_trained
    from visiontrain.evaluate.metrics import collect_predictions
    from visiontrain.evaluate.report import write_report
    from visiontrain.parallel.batch_plan import BatchPlan
    from visiontrain.parallel.runtime import Runtime, select_device
    from visiontrain.parallel.threads import use_threads

    use_threads()
    weights = Path(args.weights)
    if weights.suffix == ".onnx":
        if spec is not None:
            raise UsageError(f"--attack differentiates the model: give the run directory or weights of {weights}, "
                             "not the export")
        return evaluate_onnx(args, weights)
    trained = load_trained(weights, args.ema, args.config, args.overrides, key="--weights", data=args.data)
    cfg = trained.cfg
    if spec is not None and spec.name == "apgd" and cfg.model.num_classes < 3:
        raise UsageError(f"--attack apgd needs at least 3 classes (its DLR loss compares the top three logits); "
                         f"this model has {cfg.model.num_classes}: use --attack pgd")
    run_dir = weights if weights.is_dir() else None
    device = select_device(cfg.run.device, 0)
    classifier = TorchClassifier(trained.model, device, cfg.model.channels_last, cfg.train.precision)
    runtime = Runtime(accelerator=None, device=device, rank=0, world_size=1, local_rank=0, launcher="single")
    data = build_data(cfg, runtime, BatchPlan.of_micro_batch(args.batch_size), train=False)
    args.tta = args.tta or cfg.train.tta  # a run evaluates as it was evaluated during training
    predictions = collect_predictions(classifier.model, data.val, classifier.autocast, 1, tta=args.tta)
    out = args.out or (run_dir / "eval" if run_dir else weights.with_name(f"eval_{weights.stem}"))
    about = {"weights": trained.weights, "data": cfg.data.path, "split": "val", "tta": args.tta,
             "model": cfg.model.name}
    result = write_report(out, predictions, data.class_names, about,
                          metrics_jsonl=run_dir / "metrics.jsonl" if run_dir else None)
    print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  "
          f"({result['samples']} samples, tta {args.tta})")
    if spec is not None:
        robust = attack_report(classifier, data, cfg, spec, args.attack_images, device, out, about)
        print(f"{spec.name} eps {args.epsilon}: clean top-1 {robust['clean_top1']:.2f}%  robust top-1 "
              f"{robust['robust_top1']:.2f}%  ({robust['samples']} images, {robust['seconds']:.1f} s)")
    print(f"report: {out / 'report.md'}")
    return 0


def attack_report(classifier, data, cfg, spec, images: int, device, out: Path, about: dict) -> dict:
    """Clean and robust top-1 of about `images` validation images (every k-th), written to out/robust.json."""
    from visiontrain.infra.fileio import write_json
    from visiontrain.robust.attacks import PixelSpace
    from visiontrain.robust.evaluation import robust_accuracy

    every = max(1, data.val.num_samples // images)  # spread over the classes (datasets are stored by class)
    result = robust_accuracy(classifier.model, data.val, PixelSpace(cfg.data.mean, cfg.data.std, device), spec,
                             device, 1, 0, classifier.autocast, cfg.train.precision == "fp16", every)
    record = {**about, **spec.describe(), "space": "[0, 1] pixels, L-infinity", "batchnorm": "eval", **result}
    write_json(out / "robust.json", record)
    return record


def onnx_config(model: Path, contract, config_file: str | None, overrides: list[str], data: str | None):
    """The data settings that reproduce `model`'s input contract: its run's config (or -c), the overrides, then
    the contract's own values (an override that contradicts them is refused)."""
    from visiontrain import config
    from visiontrain.deploy.trained import NOT_TRAINING

    run_config = Path(contract.training_dir or "") / "config.yaml"
    base = config_file
    if base is None and contract.training_dir:
        if run_config.is_file():
            base = str(run_config)
        else:
            log.warning("the training run %s of %s is gone: data settings are the defaults, the overrides and the "
                        "contract's (give -c CONFIG for the run's loader and classes)", contract.training_dir, model)
    size, shorter = contract.preprocess.size, contract.preprocess.resize_to
    described = {"model.num_classes": str(len(contract.class_names)), "data.val_image_size": str(size),
                 "data.mean": str(list(contract.mean)), "data.std": str(list(contract.std))}
    if contract.recipe:
        described["data.recipe"] = contract.recipe
        if contract.recipe == "imagenet":
            described["data.val_crop_ratio"] = str(size / shorter)
    for item in overrides:
        key, _, value = item.partition("=")
        if key in described and value.replace(" ", "") != described[key].replace(" ", ""):
            raise UsageError(f"{item}: {model}'s input contract says {key}={described[key]}; an exported model "
                             "is evaluated with the preprocessing it was exported with")
    path = data or next((item.partition("=")[2] for item in overrides if item.startswith("data.path=")), None)
    if path is None and base is None:
        path = contract.data_path
    extra = list(overrides) + [f"{k}={v}" for k, v in described.items()] + ([f"data.path={path}"] if path else [])
    return config.load_config(base, extra + NOT_TRAINING)


def evaluate_onnx(args: argparse.Namespace, model: Path) -> int:
    """An exported ONNX model on a dataset's validation split, with the evaluation report of a run."""
    import contextlib

    import torch

    from visiontrain.data import build_data
    from visiontrain.deploy.contract import read_contract
    from visiontrain.deploy.inference import OnnxClassifier
    from visiontrain.evaluate.metrics import collect_predictions
    from visiontrain.evaluate.report import write_report
    from visiontrain.parallel.batch_plan import BatchPlan
    from visiontrain.parallel.runtime import Runtime

    if args.ema:
        raise UsageError(f"--ema reads a run directory's EMA weights; {model} is an exported model")
    if not model.is_file():
        raise UsageError(f"--weights {model} does not exist")
    contract = read_contract(model)
    cfg = onnx_config(model, contract, args.config, args.overrides, args.data)
    cfg.model.channels_last = False
    classifier = OnnxClassifier(model, torch.device("cpu"))
    cpu = torch.device("cpu")
    runtime = Runtime(accelerator=None, device=cpu, rank=0, world_size=1, local_rank=0, launcher="single")
    data = build_data(cfg, runtime, BatchPlan.of_micro_batch(args.batch_size), train=False)
    if list(data.class_names) != list(contract.class_names):
        raise UsageError(f"--weights {model} classifies {len(contract.class_names)} classes "
                         f"({', '.join(contract.class_names[:3])}, ...); the dataset at data.path={cfg.data.path} "
                         f"has {data.num_classes} ({', '.join(data.class_names[:3])}, ...): select them with "
                         "data.classes=[...] or give the dataset it was trained on")
    tta = args.tta or cfg.train.tta  # as the run evaluated, where its config is known
    predictions = collect_predictions(classifier, data.val, contextlib.nullcontext, 1, tta=tta)
    out = args.out or model.with_name(f"eval_{model.name.removesuffix('.onnx')}")
    about = {"weights": str(model), "data": cfg.data.path, "split": "val", "tta": tta, "model": contract.model_name,
             "backend": "onnxruntime (cpu)"}
    result = write_report(out, predictions, contract.class_names, about)
    print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  "
          f"({result['samples']} samples, tta {tta}, {model.name} in ONNX Runtime)")
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
