"""ImageNet time to train, projected from measured training throughput.

    python -m visiontrain bench project [RESULTS ...] [--rate MODEL:RES=IMG_S ...] [--of e2e|step]
        [--where key=value ...] [--epochs 16 24 ...] [--gpus 8] [--efficiency 0.9] [--out DIR]

For each ImageNet config (configs/imagenet/resnet50.yaml, resnet18.yaml by default) and each of
FFCV's epoch counts, the progressive-resizing schedule gives every epoch's training resolution
(the trainer's own `resolution_for_epoch`, with FFCV's ramp for that epoch count); an epoch
takes `images / rate(resolution)` seconds, where `rate` is the measured per-GPU training
throughput at that resolution. The sum is the projected 1-GPU time; N GPUs take
1-GPU time / (N x efficiency).

Rates between two measured resolutions: the time per image is interpolated linearly in the
pixel count (res^2) between the two nearest measured resolutions, i.e. the rate is taken to
fall as 1/pixels (exact at measured points; a rate proportional to 1/pixels is reproduced
exactly). A resolution outside the measured range is refused (exit 2): measure it.

What a projection leaves out: evaluation passes, process start, compilation and FFCV's first
epoch (JIT), checkpoints. It assumes the rate measured on one GPU with its CPU cores and the
dataset in the page cache holds for every GPU of the node (FFCV's `in_memory=1`).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from visiontrain.bench.projection_inputs import (
    comparisons,
    environment_summary,
    load_results,
    measured_points,
    parse_rate,
    parse_where,
    select_rates,
)
from visiontrain.infra import fileio
from visiontrain.infra.errors import UsageError
from visiontrain.infra.paths import SOURCE_TREE

SCHEMA_VERSION = 1
ROOT = SOURCE_TREE
DEFAULT_CONFIGS = (ROOT / "configs" / "imagenet" / "resnet50.yaml", ROOT / "configs" / "imagenet" / "resnet18.yaml")
IMAGENET_TRAIN_IMAGES = 1_281_167  # ImageNet-1k (ILSVRC-2012) training split
DEFAULT_GPUS = 8
# Assumed data-parallel efficiency of 8 GPUs in one NVLink node. NVIDIA's published PyTorch ResNet-50 v1.5
# figures (github.com/NVIDIA/DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md,
# DGX A100, 1 -> 8 GPUs): 7.72x in TF32 (96.5 %), 6.72x in mixed precision (84 %); DGX-1 V100 mixed
# precision 6.93x (87 %). 0.9 lies between; pass --efficiency to use another figure.
DEFAULT_EFFICIENCY = 0.9

# FFCV's ImageNet configurations: github.com/libffcv/ffcv-imagenet (commit 4dd291a, December 2023),
# rn50_configs/rn50_<E>_epochs.yaml and rn18_configs/rn18_<E>_epochs.yaml, which share their
# resolution sections: epochs -> (resolution.start_ramp, resolution.end_ramp); in every one of them
# resolution.min_res 160, resolution.max_res 192, validation.resolution 256.
FFCV_RAMPS = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48), 88: (65, 76)}
FFCV_MIN_RES, FFCV_MAX_RES, FFCV_VAL_RES = 160, 192, 256
EPOCH_COUNTS = tuple(FFCV_RAMPS)

# FFCV's published results: the "Configurations" table of the README of github.com/libffcv/ffcv-imagenet
# (commit 4dd291a; the same table is in github.com/libffcv/ffcv's README): model -> epochs ->
# (top-1 %, training time in minutes); ResNet-50 on 8 x A100, ResNet-18 on 1 x A100.
FFCV_PUBLISHED = {
    "resnet50": {88: (78.4, 77.2), 56: (78.0, 49.4), 40: (77.2, 35.6), 32: (76.6, 28.7), 24: (75.6, 21.7),
                 16: (73.8, 14.9)},
    "resnet18": {88: (72.4, 187.3), 56: (71.3, 119.4), 40: (70.6, 85.5), 32: (70.0, 68.9), 24: (68.8, 51.6),
                 16: (66.9, 35.0)},
}
FFCV_GPUS = {"resnet50": 8, "resnet18": 1}  # A100s of FFCV's published runs
FFCV_SOURCE = "github.com/libffcv/ffcv-imagenet README (commit 4dd291a)"

NOT_MEASURED = "not measured"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="*", type=Path,
                        help="results.json files of `bench e2e`/`bench step`, or directories holding them "
                             "(searched recursively)")
    parser.add_argument("--rate", action="append", default=[], metavar="MODEL:RES=IMG_S",
                        help="a measured per-GPU rate, e.g. resnet50:160=3000 (takes precedence over results)")
    parser.add_argument("--of", choices=("e2e", "step"), default="e2e",
                        help="which measurement the projection uses (default e2e: the data loader included; "
                             "step: the compute ceiling)")
    parser.add_argument("--where", nargs="+", default=[], metavar="key=value",
                        help="use only result points with these fields, e.g. compile=true; otherwise the "
                             "fastest point per model and resolution")
    parser.add_argument("--config", nargs="+", type=Path, default=list(DEFAULT_CONFIGS),
                        help="configs with progressive resizing (default configs/imagenet/resnet50.yaml, "
                             "resnet18.yaml)")
    parser.add_argument("--epochs", nargs="+", type=int, default=list(EPOCH_COUNTS),
                        help=f"epoch counts, of FFCV's {', '.join(map(str, EPOCH_COUNTS))}")
    parser.add_argument("--gpus", type=int, default=DEFAULT_GPUS, help="GPUs of the multi-GPU column (default 8)")
    parser.add_argument("--efficiency", type=float, default=DEFAULT_EFFICIENCY,
                        help="assumed data-parallel scaling efficiency on those GPUs, in (0, 1] (default 0.9)")
    parser.add_argument("--images", type=int, default=IMAGENET_TRAIN_IMAGES,
                        help=f"training images per epoch (default {IMAGENET_TRAIN_IMAGES:,}: ImageNet-1k)")
    parser.add_argument("--out", type=Path, help="write projection.json and projection.md here")


# ---------------------------------------------------------------- arithmetic

def rate_at(measured: dict[int, float], res: int) -> float:
    """Per-GPU images/s at `res` from rates measured at other resolutions: the time per image
    interpolated linearly in pixels between the two nearest measured resolutions. Raises
    ValueError outside the measured range."""
    if res in measured:
        return measured[res]
    lower = max((r for r in measured if r < res), default=None)
    upper = min((r for r in measured if r > res), default=None)
    if lower is None or upper is None:
        raise ValueError(f"{res} px is outside the measured resolutions {_span(measured)}")
    fraction = (res ** 2 - lower ** 2) / (upper ** 2 - lower ** 2)
    seconds = 1 / measured[lower] + fraction * (1 / measured[upper] - 1 / measured[lower])
    return 1 / seconds


def training_seconds(resolutions: Iterable[int], measured: dict[int, float], images: int) -> float:
    """One GPU: the sum over epochs of images / rate(resolution of that epoch)."""
    return sum(images / rate_at(measured, res) for res in resolutions)


def multi_gpu_seconds(one_gpu_seconds: float, gpus: int, efficiency: float) -> float:
    return one_gpu_seconds / (gpus * efficiency)


def describe_schedule(resolutions: list[int]) -> str:
    """'160 px x 13, 192 px x 3': epochs per resolution, in the order they are first trained."""
    counts = Counter(resolutions)
    return ", ".join(f"{res} px x {counts[res]}" for res in dict.fromkeys(resolutions))


def _span(measured: dict[int, float]) -> str:
    return ", ".join(str(r) for r in sorted(measured)) + " px"


# ---------------------------------------------------------------- schedules

def schedule(config: Path, epochs: int):
    """(config, per-epoch training resolutions) of `config` stretched to `epochs` with FFCV's ramp
    for that epoch count, through the trainer's own progressive-resizing function."""
    from visiontrain.config import load_config
    from visiontrain.data.augment import resolution_for_epoch

    if epochs not in FFCV_RAMPS:
        raise UsageError(f"--epochs {epochs}: FFCV publishes ramps for {', '.join(map(str, FFCV_RAMPS))} epochs only")
    start, end = FFCV_RAMPS[epochs]
    cfg = load_config(config, [f"train.epochs={epochs}", f"data.ramp_start_epoch={start}",
                               f"data.ramp_end_epoch={end}"])
    return cfg, [resolution_for_epoch(epoch, cfg.data) for epoch in range(epochs)]


# ---------------------------------------------------------------- measured rates


# ---------------------------------------------------------------- the projection

def project(configs: list[Path], epoch_counts: list[int], rates: dict[str, dict[int, dict]], images: int,
            gpus: int, efficiency: float) -> list[dict[str, Any]]:
    rows = []
    for config in configs:
        for epochs in epoch_counts:
            cfg, resolutions = schedule(config, epochs)
            model = cfg.model.name
            published = FFCV_PUBLISHED.get(model, {}).get(epochs)
            row: dict[str, Any] = {
                "model": model, "config": str(config), "epochs": epochs,
                "ramp": {"start_epoch": cfg.data.ramp_start_epoch, "end_epoch": cfg.data.ramp_end_epoch,
                         "min_res": cfg.data.min_res, "max_res": cfg.data.max_res,
                         "res_multiple": cfg.data.res_multiple, "val_res": cfg.data.val_image_size}
                if cfg.data.progressive_resizing else None,
                "resolutions": resolutions, "schedule": describe_schedule(resolutions),
                "measured": model in rates,
                "one_gpu_seconds": None, "one_gpu_hours": None, "multi_gpu_minutes": None,
                "ffcv_published": None if published is None else {
                    "top1_percent": published[0], "minutes": published[1], "gpus": FFCV_GPUS[model],
                    "gpu": "A100", "source": FFCV_SOURCE},
            }
            if model in rates:
                measured = {res: r["images_per_s"] for res, r in rates[model].items()}
                try:
                    seconds = training_seconds(resolutions, measured, images)
                except ValueError as err:
                    needed = sorted(set(resolutions))
                    raise UsageError(f"{model}, {epochs} epochs ({row['schedule']}): {err}; measure "
                                     f"{', '.join(map(str, needed))} px or give --rate {model}:RES=IMG_S") from None
                row.update(one_gpu_seconds=seconds, one_gpu_hours=seconds / 3600,
                           multi_gpu_minutes=multi_gpu_seconds(seconds, gpus, efficiency) / 60)
            rows.append(row)
    return rows


def rates_used(rows: list[dict[str, Any]], rates: dict[str, dict[int, dict]]) -> list[dict[str, Any]]:
    """Every resolution a projected schedule trains at: measured, or interpolated between which."""
    used = []
    for model in dict.fromkeys(r["model"] for r in rows if r["measured"]):
        measured = {res: r["images_per_s"] for res, r in rates[model].items()}
        needed = {res for r in rows if r["model"] == model for res in r["resolutions"]}
        for res in sorted(needed | set(measured)):
            entry = {"model": model, "image_size": res, "images_per_s": rate_at(measured, res)}
            if res in measured:
                entry.update(rates[model][res], interpolated=False)
            else:
                lower = max(r for r in measured if r < res)
                upper = min(r for r in measured if r > res)
                entry.update(interpolated=True, between=[lower, upper])
            entry["used"] = res in needed
            used.append(entry)
    return used


def build(args: argparse.Namespace, command: str) -> dict[str, Any]:
    if args.gpus < 1:
        raise UsageError(f"--gpus {args.gpus}: at least 1")
    if not (0 < args.efficiency <= 1):
        raise UsageError(f"--efficiency {args.efficiency}: must be in (0, 1] (1 = linear scaling)")
    if args.images < 1:
        raise UsageError(f"--images {args.images}: at least 1")
    for config in args.config:
        if not config.is_file():
            raise UsageError(f"--config {config}: no such file")
    loaded = load_results(args.results)
    points = measured_points(loaded)
    where = parse_where(args.where, points)
    rates = select_rates(points, args.of, where)
    models = {schedule(c, args.epochs[0])[0].model.name for c in args.config}
    if args.results and not models & set(rates):
        found = sorted({f"{p['mode']} {p['model']}" for p in points}) or ["no successful points"]
        raise UsageError(f"no {args.of} points for {' or '.join(sorted(models))} in the results given"
                         f"{' with --where ' + ' '.join(args.where) if args.where else ''} "
                         f"(found: {', '.join(found)})")
    for item in args.rate:
        model, res, value = parse_rate(item)
        rates.setdefault(model, {})[res] = {"images_per_s": value, "source": "--rate", "mode": "given"}
    rows = project(args.config, args.epochs, rates, args.images, args.gpus, args.efficiency)
    return {
        "schema_version": SCHEMA_VERSION, "kind": "imagenet_time_to_train_projection", "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "of": args.of, "where": where,
        "images_per_epoch": args.images, "gpus": args.gpus, "efficiency": args.efficiency,
        "interpolation": "time per image linear in pixels (res^2) between the two nearest measured resolutions",
        "rows": rows, "rates": rates_used(rows, rates), "comparisons": comparisons(points),
        "sources": [environment_summary(entry) for entry in loaded],
    }


# ---------------------------------------------------------------- output

def _num(value: float | None, spec: str) -> str:
    return NOT_MEASURED if value is None else format(value, spec)


def table(doc: dict[str, Any]) -> str:
    eff = f"{100 * doc['efficiency']:g} %"
    header = ["model", "epochs", "res schedule (px x epochs)", "projected 1-GPU hours",
              f"projected {doc['gpus']}-GPU minutes ({eff} eff.)", "FFCV published minutes (setup)",
              "FFCV published top-1"]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        ffcv = r["ffcv_published"]
        lines.append("| " + " | ".join([
            r["model"], str(r["epochs"]), r["schedule"], _num(r["one_gpu_hours"], ".2f"),
            _num(r["multi_gpu_minutes"], ".1f"),
            "n/a" if ffcv is None else f"{ffcv['minutes']:.1f} ({ffcv['gpus']} x A100)",
            "n/a" if ffcv is None else f"{ffcv['top1_percent']:.1f} %"]) + " |")
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    of = {"e2e": "`bench e2e` (configured data loader + training step)",
          "step": "`bench step` (batches already on the device: the compute ceiling)"}[doc["of"]]
    lines = [
        f"# ImageNet time to train (projected, from {doc['of']} rates)",
        "",
        f"`{doc['command']}`; {doc['created']}",
        "",
        f"Projected, not measured end to end: {doc['images_per_epoch']:,} images per epoch divided by the "
        f"measured per-GPU rate at each epoch's resolution ({of}), summed over the epochs; "
        f"{doc['gpus']} GPUs = 1-GPU time / ({doc['gpus']} x {doc['efficiency']:g}), the efficiency assumed. "
        "FFCV columns: FFCV's published figures (" + FFCV_SOURCE + "), not ours.",
        "",
        table(doc),
        "",
    ]
    if doc["rates"]:
        lines += ["## Per-GPU rates used", "",
                  "| model | px | img/s per GPU | from | point | source |", "|---|---:|---:|---|---|---|"]
        for r in doc["rates"]:
            if r["interpolated"]:
                origin, point, source = f"interpolated {r['between'][0]}-{r['between'][1]} px", "", ""
            else:
                origin = r["mode"] + (f" (fastest of {r['matching_points']})" if r.get("matching_points", 1) > 1
                                      else "")
                point, source = r.get("label", ""), r["source"]
            note = "" if r["used"] else " (not needed)"
            lines.append(f"| {r['model']} | {r['image_size']} | {r['images_per_s']:.1f}{note} | {origin} | "
                         f"{point} | {source} |")
        lines.append("")
    if doc["comparisons"]:
        lines += ["## e2e against step (same setting)", "",
                  "| model | px | point | loader | e2e img/s | step img/s | e2e / step | data wait (e2e) |",
                  "|---|---:|---|---|---:|---:|---:|---:|"]
        for c in doc["comparisons"]:
            ratio = "-" if c["e2e_over_step"] is None else f"{c['e2e_over_step']:.2f}"
            step = "-" if c["step_images_per_s"] is None else f"{c['step_images_per_s']:.1f}"
            wait = "-" if c["data_wait_fraction"] is None else f"{100 * c['data_wait_fraction']:.1f} %"
            lines.append(f"| {c['model']} | {c['image_size']} | {c['label']} | {c['data_loader']} | "
                         f"{c['e2e_images_per_s']:.1f} | {step} | {ratio} | {wait} |")
        lines.append("")
    if doc["sources"]:
        lines += ["## Measured on", ""]
        for s in doc["sources"]:
            device = f"{s['gpu']} x{s['gpu_count']}, driver {s['driver']}" if s["gpu"] else f"CPU ({s['cpu_model']})"
            lines.append(f"- `{s['path']}` ({s['mode']}, {s['created']}): {device}; {s['cpu_count']} CPUs; "
                         f"torch {s['torch']}, CUDA {s['cuda']}, cuDNN {s['cudnn']}, ffcv {s['ffcv']}")
        lines.append("")
    lines += ["Left out: evaluation passes, process start, compilation and the loader's first epoch, "
              "checkpoints. Assumed: every GPU of the node trains at the rate measured on one GPU with its "
              "CPU cores, the dataset in the page cache.", ""]
    return "\n".join(lines)


def main(args: argparse.Namespace, argv: list[str]) -> int:
    doc = build(args, "python -m visiontrain bench " + " ".join(argv))
    text = markdown(doc)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        fileio.write_json(args.out / "projection.json", doc)
        fileio.write_text(args.out / "projection.md", text)
    print(text)
    if args.out:
        print(f"projection: {args.out}/projection.json, projection.md")
    return 0
