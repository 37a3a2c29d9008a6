"""Export a trained model for deployment, check it against PyTorch, and describe its input.

    python -m visiontrain export RUN_DIR|WEIGHTS --format onnx|torchscript|exported [--out FILE]
        [--batch-size N|dynamic] [--precision fp32|fp16|bf16] [--ema] [--check-images PATH ...]
        [-c CONFIG] [--quantize int8|dynamic ...] [section.key=value ...]

Formats: onnx (torch.onnx's exporter, opset 18: runs under ONNX Runtime), torchscript
(torch.jit.trace), exported (torch.export's program, .pt2). The batch dimension is dynamic
unless --batch-size N fixes it. The model takes float32 images and returns float32 logits
whatever --precision says (the weights and arithmetic inside are fp16/bf16). Beside the
model, FILE.json holds the input contract: image size, resize and crop, mean/std, channel
order, class names, the training run and its top-1.

After exporting, the exported file and the PyTorch model (fp32) run on the same real images:
the run's validation images (its data.path) or --check-images. The largest difference of
logits, relative to the largest logit, must stay within 1e-4 (fp32), 1e-2 (fp16) or 5e-2
(bf16), else the file is not kept and the exit code is 1.
With --format onnx --quantize int8 (static, calibrated on the run's training images) or
--quantize dynamic, the checked fp32 model is quantized and kept only if its top-1 on the run's
validation split is within --max-drop points of fp32's (the accuracy gate; docs/deploy.md).
Default output: model_int8.onnx / model_int8_dynamic.onnx.
Exit codes: 0 done, 1 the check or the accuracy gate failed, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from visiontrain.deploy.contract import INPUT_NAME, OUTPUT_NAME, build_contract, contract_path
from visiontrain.deploy.quantize import GRANULARITIES, METHODS, MODES, REDUCE_RANGE
from visiontrain.deploy.trained import TrainedModel, load_trained
from visiontrain.infra import fileio
from visiontrain.infra.errors import ArgumentParser, CheckFailed, UsageError, run_cli
from visiontrain.parallel.threads import use_threads

log = logging.getLogger("visiontrain")

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported": ".pt2"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Largest |exported - PyTorch fp32| over the largest |PyTorch fp32| logit: float32 reorderings stay far below
# 1e-4; half precision carries ~3 (fp16) or ~2 (bf16) significant digits through the network.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
ONNX_OPSET = 18  # ONNX Runtime 1.14+ runs it; the newest opset torch.onnx's exporter translates ResNets to
CHECK_BATCH = 16


class InPrecision(nn.Module):
    """float32 images in, float32 logits out; the model's weights and arithmetic in `dtype`."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model.to(dtype), dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.dtype)).float()


def export_model(model: nn.Module, fmt: str, path: Path, example: torch.Tensor, dynamic_batch: bool,
                 precision: str = "fp32") -> int | None:
    """Write `model` (eval mode, CPU) as `fmt` to `path`; returns the ONNX opset (None for other formats).
    `example`: a float32 batch of the input size (its batch size is the fixed one unless `dynamic_batch`)."""
    import copy

    wrapped = InPrecision(copy.deepcopy(model).eval().to("cpu", memory_format=torch.contiguous_format),
                          DTYPES[precision]).eval()
    if dynamic_batch and example.shape[0] < 2:
        example = example.repeat(2, 1, 1, 1)  # a batch of 1 would be specialized as a constant
    batch = {"images": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    # The exporters warn about TorchScript's deprecation and their own internals: nothing a user acts on.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            torch.onnx.export(wrapped, (example,), str(path), dynamo=True, opset_version=ONNX_OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=batch,
                              verbose=False, external_data=False)
            return ONNX_OPSET
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(wrapped, example), str(path))
            return None
        if fmt == "exported":
            torch.export.save(torch.export.export(wrapped, (example,), dynamic_shapes=batch), str(path))
            return None
    raise UsageError(f"--format {fmt!r} is invalid: allowed {', '.join(SUFFIXES)}")


def load_exported(path: Path, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The file this module just wrote, as a function of float32 batches (CPU). Only for our own files:
    TorchScript and .pt2 files can run code, so python -m visiontrain predict never loads them."""
    if fmt == "onnx":
        from visiontrain.deploy.inference import OnnxClassifier

        return OnnxClassifier(path, torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
    return lambda images: module(images).float()


@dataclass
class CheckResult:
    images: int
    max_abs_diff: float
    max_rel_diff: float  # max_abs_diff / largest |reference logit|
    top1_agree: int
    batch_sizes: list[int]

    def as_dict(self, tolerance: float) -> dict:
        return {"images": self.images, "max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
                "tolerance_rel": tolerance, "top1_agree": self.top1_agree, "batch_sizes": self.batch_sizes}


@torch.no_grad()
def compare(reference: nn.Module, exported: Callable[[torch.Tensor], torch.Tensor],
            batches: list[torch.Tensor]) -> CheckResult:
    """Both models on the same float32 batches: the largest logit difference and top-1 agreement."""
    ref, out = [], []
    for batch in batches:
        ref.append(reference(batch).float())
        out.append(exported(batch).float())
        if out[-1].shape != ref[-1].shape:
            raise CheckFailed(f"the exported model returned shape {list(out[-1].shape)} for a batch of "
                              f"{batch.shape[0]}; PyTorch returned {list(ref[-1].shape)}")
    ref_all, out_all = torch.cat(ref), torch.cat(out)
    max_abs = (ref_all - out_all).abs().max().item()
    scale = ref_all.abs().max().item()
    return CheckResult(len(ref_all), max_abs, max_abs / scale if scale > 0 else max_abs,
                       int((ref_all.argmax(1) == out_all.argmax(1)).sum()), [b.shape[0] for b in batches])


def check_batches(images: torch.Tensor, batch_size: int | None) -> list[torch.Tensor]:
    """The check's batches: a lone image then batches of CHECK_BATCH (dynamic), or batches of exactly N."""
    if batch_size is None:
        return [images[:1]] + list(images[1:].split(CHECK_BATCH))
    if len(images) < batch_size:
        images = images.repeat((batch_size + len(images) - 1) // len(images), 1, 1, 1)
    return list(images[: len(images) // batch_size * batch_size].split(batch_size))


def images_from_run_data(trained: TrainedModel, count: int) -> torch.Tensor:
    """The first `count` validation images of the run's dataset, through its own evaluation loader."""
    from visiontrain.data import build_data
    from visiontrain.parallel.batch_plan import BatchPlan
    from visiontrain.parallel.runtime import Runtime

    cpu = torch.device("cpu")
    trained.cfg.model.channels_last = False
    runtime = Runtime(accelerator=None, device=cpu, rank=0, world_size=1, local_rank=0, launcher="single")
    try:
        data = build_data(trained.cfg, runtime, BatchPlan.of_micro_batch(min(count, 256)), train=False)
    except UsageError as err:
        raise UsageError(f"no images to check the export with: {err}; give --check-images FILES_OR_DIRS") from None
    images = next(iter(data.val))[0]
    return images[:count].contiguous()


def parse_args(argv: list[str]):
    parser = ArgumentParser(prog="python -m visiontrain export", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="run directory or weights file (.safetensors, .pth)")
    parser.add_argument("--format", required=True, choices=tuple(SUFFIXES))
    parser.add_argument("--out", type=Path, help="default: RUN_DIR/export/model<suffix>, or beside the weights file")
    parser.add_argument("--batch-size", default="dynamic", help="dynamic (default) or a fixed batch size N")
    parser.add_argument("--precision", default="fp32", choices=tuple(DTYPES))
    parser.add_argument("--ema", action="store_true", help="the run's EMA weights")
    parser.add_argument("--check-images", nargs="+", metavar="PATH",
                        help="image files or folders for the check (default: the run's validation images)")
    parser.add_argument("--check-count", type=int, default=32, help="images the check uses (default 32)")
    parser.add_argument("-c", "--config", help="config describing a weights file's model and data")
    int8 = parser.add_argument_group("int8 (--format onnx --quantize int8|dynamic; docs/deploy.md)")
    int8.add_argument("--quantize", choices=MODES,
                      help="int8: static, calibrated (QDQ); dynamic: activation ranges computed at run time")
    int8.add_argument("--calibration", type=int, metavar="N",
                      help="calibration images drawn from the run's training split (default 512)")
    int8.add_argument("--calibration-images", nargs="+", metavar="PATH",
                      help="calibrate on these image files or folders instead (up to --calibration of them)")
    int8.add_argument("--calibration-seed", type=int, help="draws the training images (default 0)")
    int8.add_argument("--calibration-method", choices=METHODS, help="minmax (default) | entropy | percentile")
    int8.add_argument("--weight-granularity", choices=GRANULARITIES,
                      help="int8 scales per output channel (default) or per tensor")
    int8.add_argument("--reduce-range", choices=REDUCE_RANGE,
                      help="7-bit weights: auto (default) = on for an x86 CPU without VNNI (docs/deploy.md)")
    int8.add_argument("--keep-float", nargs="+", metavar="OP_OR_NODE",
                      help="op types (Conv, Gemm, ...) or node names left in float")
    int8.add_argument("--search", action="store_true",
                      help="try every calibration method with per-channel and per-tensor weights; keep the best "
                           "that passes the gate")
    int8.add_argument("--max-drop", type=float,
                      help="accuracy gate: most top-1 points the int8 model may lose to fp32 (default 1.0)")
    int8.add_argument("--gate-images", type=int, metavar="N",
                      help="gate on the first N validation images in the dataset's order (default: all of them)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    # Overrides may stand before or after the options (after one that takes several values, e.g.
    # --check-images, they would be read as its values: put them before it).
    args = parser.parse_intermixed_args(argv)
    check_quantize_args(args)
    if args.batch_size != "dynamic":
        if not args.batch_size.isdigit() or int(args.batch_size) < 1:
            raise UsageError(f"--batch-size {args.batch_size!r} is invalid: allowed dynamic or an integer >= 1")
    if args.check_count < 1:
        raise UsageError(f"--check-count {args.check_count} is invalid: must be >= 1")
    if args.format == "onnx" and args.precision == "bf16":
        raise UsageError("--precision bf16 is not available with --format onnx: ONNX's Conv has no bfloat16 type "
                         "(ONNX Runtime refuses the model); use fp16 or fp32")
    return args


INT8_DEFAULTS = {"calibration": 512, "calibration_seed": 0, "calibration_method": "minmax",
                 "weight_granularity": "channel", "reduce_range": "auto", "max_drop": 1.0, "gate_images": 0}


def check_quantize_args(args) -> None:
    """The int8 options: only with --quantize and what they apply to; then their defaults filled in."""
    given = [f"--{key.replace('_', '-')}" for key in [*INT8_DEFAULTS, "calibration_images", "keep_float", "search"]
             if getattr(args, key) not in (None, False)]
    if args.quantize is None:
        if given:
            raise UsageError(f"{given[0]} applies to an int8 export: add --quantize int8 (or dynamic)")
        return
    if args.format != "onnx" or args.precision != "fp32":
        raise UsageError(f"--quantize {args.quantize} makes an int8 ONNX model from the fp32 one: it needs "
                         f"--format onnx --precision fp32, not --format {args.format} --precision {args.precision}")
    if args.batch_size != "dynamic":
        raise UsageError(f"--quantize with --batch-size {args.batch_size}: the int8 model is calibrated one image "
                         "at a time and timed at batch 1; export it with a dynamic batch (the default)")
    static_only = [flag for flag in given if flag in ("--calibration", "--calibration-images", "--calibration-seed",
                                                      "--calibration-method", "--search")]
    if args.quantize == "dynamic" and static_only:
        raise UsageError(f"--quantize dynamic computes activation ranges at run time: {static_only[0]} applies to "
                         "--quantize int8")
    if args.calibration_images and args.calibration_seed is not None:
        raise UsageError("--calibration-seed draws images from the run's training split; with "
                         "--calibration-images the given files are used in order")
    for key, value in INT8_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.calibration < 1:
        raise UsageError(f"--calibration {args.calibration} is invalid: the number of calibration images, >= 1")
    if args.calibration_seed < 0:
        raise UsageError(f"--calibration-seed {args.calibration_seed} is invalid: >= 0")
    if not args.max_drop >= 0:  # NaN too
        raise UsageError(f"--max-drop {args.max_drop:g} is invalid: top-1 points, >= 0")
    if args.gate_images < 0:
        raise UsageError(f"--gate-images {args.gate_images} is invalid: >= 1, or 0 for the whole validation split")


def default_out(source: Path, trained: TrainedModel, fmt: str, precision: str) -> Path:
    name = "model" + ("_ema" if trained.ema else "") + ("" if precision == "fp32" else f"_{precision}")
    if source.is_dir():
        return source / "export" / (name + SUFFIXES[fmt])
    return source.with_name(source.stem + ("" if precision == "fp32" else f"_{precision}") + SUFFIXES[fmt])


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # also when a caller configured INFO before: the ONNX optimizer logs every pass
    log.setLevel(logging.INFO)  # ours only
    try:
        return _export(args)
    finally:
        root.setLevel(level)


def _export(args: argparse.Namespace) -> int:
    source = Path(args.source)
    use_threads()
    trained = load_trained(source, args.ema, args.config, args.overrides, key="source")
    batch_size = None if args.batch_size == "dynamic" else int(args.batch_size)
    tag = {"int8": "int8", "dynamic": "int8_dynamic"}.get(args.quantize, args.precision)
    out = args.out or default_out(source, trained, args.format, tag)
    images = (trained.images_from_files(args.check_images, args.check_count) if args.check_images
              else images_from_run_data(trained, args.check_count))
    created = next((p for p in reversed([out.parent, *out.parent.parents]) if not p.exists()), None)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(args, trained, out, images, batch_size)
    except BaseException:
        if created is not None:  # folders this export made for a file it did not write
            shutil.rmtree(created, ignore_errors=True)
        raise
    return 0


def write(args, trained: TrainedModel, out: Path, images: torch.Tensor, batch_size: int | None) -> None:
    """Export, check (and quantize and gate) into `out` and its contract, or raise leaving no file."""
    tolerance = TOLERANCE[args.precision]
    started = time.perf_counter()
    quantized: dict = {}
    with fileio.atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as scratch:
        # With --quantize, the fp32 model is a temporary file, checked as always first; the int8 file is the product.
        written = Path(scratch) / "fp32.onnx" if args.quantize else tmp
        # A fixed batch is traced at exactly that size (the check images repeated when there are fewer).
        example = check_batches(images, batch_size)[0] if batch_size else images[:2]
        opset = export_model(trained.model, args.format, written, example, batch_size is None, args.precision)
        result = compare(trained.model, load_exported(written, args.format), check_batches(images, batch_size))
        verdict = (f"{args.format} {args.precision}: max |logit difference| {result.max_abs_diff:.3g} "
                   f"({result.max_rel_diff:.3g} of the largest logit, tolerance {tolerance:g}), top-1 agrees on "
                   f"{result.top1_agree}/{result.images} images (batches of {sorted(set(result.batch_sizes))})")
        if not result.max_rel_diff <= tolerance:  # NaN fails too
            raise CheckFailed(f"the exported model disagrees with PyTorch: {verdict}; {out} not written")
        print(f"check: {verdict}")
        if args.quantize:
            from visiontrain.deploy.quantized_export import export_quantized

            quantized = export_quantized(args, trained, tmp, out, written, INPUT_NAME)
    check = result.as_dict(tolerance)
    if args.quantize:
        check["model"] = "the fp32 model before quantization (not written); the int8 model: accuracy_gate"
    contract = build_contract(trained, out, args.format, "int8" if args.quantize else args.precision, batch_size,
                              opset, check) | quantized
    fileio.write_json(contract_path(out), contract)
    print(f"wrote {out} and {contract_path(out)} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    sys.exit(run_cli(main))
