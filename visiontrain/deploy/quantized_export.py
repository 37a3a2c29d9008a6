"""`python -m visiontrain export RUN_DIR --format onnx --quantize int8|dynamic`: the int8 model and its gate.

1. The fp32 ONNX export, checked against PyTorch as every export is (`export.py`).
2. Calibration images: `--calibration N` images of the run's training split (the data.classes selection,
   drawn per class with `--calibration-seed`), through the evaluation preprocessing; or the image files of
   `--calibration-images`.
3. One int8 model per setting tried (`quantize.py`; `--search`: every calibration method with per-channel and
   per-tensor weights), then one pass over the run's validation split (or its first `--gate-images`) with the
   fp32 model and every int8 candidate side by side.
4. The accuracy gate: a candidate passes when its top-1 is at most `--max-drop` points below fp32's; the best
   passing one is written with its contract, none passing is exit code 1 with nothing written.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visiontrain.deploy import quantize as q
from visiontrain.deploy.trained import TrainedModel
from visiontrain.infra.errors import CheckFailed, UsageError

log = logging.getLogger("visiontrain")


def calibration_from_run(trained: TrainedModel, count: int, seed: int) -> q.Calibration:
    """`count` images of the training split (all of it: data.train_fraction does not apply), as evaluation sees
    them: about the same number from each class (data.subset_seed's per-class draw, with `seed`), then exactly
    `count` of those, drawn with `seed`."""
    try:
        everything = trained.eval_data(64, "train", train_fraction=1.0)
    except UsageError as err:
        raise UsageError(f"no training images to calibrate with: {err}; give --calibration-images "
                         "FILES_OR_DIRS") from None
    fraction = min(1.0, count / max(1, everything.train_samples))
    chosen = trained.eval_data(64, "train", train_fraction=fraction, subset_seed=seed)
    images = np.concatenate([images[valid].numpy() for images, _, valid in chosen.val] or
                            [np.zeros((0, 3, 1, 1), np.float32)])
    # The per-class draw rounds (at least one image per class): exactly `count`, where there are more.
    keep = np.sort(np.random.default_rng(seed).permutation(len(images))[:count])
    return q.Calibration([images[keep]], f"train split of {trained.cfg.data.path}", seed)


def calibration_from_files(paths: list[str], trained: TrainedModel, count: int) -> q.Calibration:
    images = trained.images_from_files(paths, count, option="--calibration-images")
    return q.Calibration([b.numpy() for b in images.split(64)], " ".join(paths), None)


@dataclass
class Candidate:
    settings: q.QuantSettings
    path: Path
    float_head: list[str]
    correct: int = 0
    agree: int = 0  # top-1 equal to fp32's

    def top1(self, images: int) -> float:
        return 100 * self.correct / images

    def row(self, fp32_top1: float, images: int) -> dict:
        return {**self.settings.as_dict(), "top1": round(self.top1(images), 3),
                "drop": round(fp32_top1 - self.top1(images), 3), "agree_with_fp32": self.agree}


def gate(trained: TrainedModel, fp32: Path, candidates: list[Candidate], limit: int) -> tuple[float, int]:
    """One pass over the validation split: the fp32 model's top-1 (%), and every candidate's counts; the number
    of images."""
    from visiontrain.deploy.inference import OnnxClassifier

    cpu = torch.device("cpu")
    reference = OnnxClassifier(fp32, cpu)
    models = [OnnxClassifier(c.path, cpu) for c in candidates]
    try:
        data = trained.eval_data(128)
    except UsageError as err:
        raise UsageError(f"the accuracy gate needs the run's validation images: {err}; give data.path=DIR") from None
    correct = seen = 0
    for images, labels, valid in data.val:
        keep = min(int(valid.sum()), limit - seen) if limit else int(valid.sum())
        if keep <= 0:
            break
        images, labels = images[valid][:keep], labels[valid][:keep]
        expected = reference(images).argmax(1)
        correct += int((expected == labels).sum())
        for candidate, model in zip(candidates, models):
            got = model(images).argmax(1)
            candidate.correct += int((got == labels).sum())
            candidate.agree += int((got == expected).sum())
        seen += keep
    if seen == 0:
        raise UsageError(f"the run's validation split at data.path={trained.cfg.data.path} has no images")
    return 100 * correct / seen, seen


def latency_ms(path: Path, size: int, threads: int, runs: int = 50) -> float:
    """Median milliseconds of one batch-1 inference (ONNX Runtime, `threads` intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = threads, 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    image = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    for _ in range(5):
        session.run(None, {name: image})
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        session.run(None, {name: image})
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def export_quantized(args, trained: TrainedModel, target: Path, final: Path, fp32: Path, input_name: str) -> dict:
    """Quantize the checked fp32 export `fp32`, gate, and copy the best passing int8 model to `target` (the
    temporary name of `final`); the contract's quantization part. CheckFailed (exit 1) when none passes."""
    base = q.QuantSettings(args.quantize, args.calibration_method or "minmax", args.weight_granularity,
                           q.reduce_range_for(args.reduce_range), tuple(args.keep_float or ()))
    tries = q.search_space(base) if args.search else [base]
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=final.parent) as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        q.prepare(fp32, prepared)
        q.resolve_keep_float(prepared, base.keep_float, base.mode)  # a bad name fails before any image is read
        calibration = None
        if args.quantize == "int8":
            calibration = (calibration_from_files(args.calibration_images, trained, args.calibration)
                           if args.calibration_images else calibration_from_run(trained, args.calibration,
                                                                                args.calibration_seed))
            log.info("quantize: calibrating on %d images (%s)", calibration.count, calibration.source)
        candidates = []
        for number, settings in enumerate(tries):
            path = Path(scratch) / f"int8_{number}.onnx"
            began = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
                head = q.quantize(prepared, path, settings, input_name, calibration)
            log.info("quantize: %s in %.1f s", settings.label(), time.perf_counter() - began)
            candidates.append(Candidate(settings, path, head))
        fp32_top1, images = gate(trained, fp32, candidates, args.gate_images)
        rows = [c.row(fp32_top1, images) for c in candidates]
        for row, candidate in zip(rows, candidates):
            print(f"gate: {candidate.settings.label()}: top-1 {row['top1']:.2f}% (fp32 {fp32_top1:.2f}%, "
                  f"drop {row['drop']:.2f} points, max {args.max_drop:g}); same class as fp32 on "
                  f"{candidate.agree}/{images}")
        passing = [i for i, c in enumerate(candidates) if fp32_top1 - c.top1(images) <= args.max_drop]
        if not passing:
            raise CheckFailed(f"no int8 model passes the accuracy gate (top-1 drop <= {args.max_drop:g} points on "
                              f"{images} validation images): best drop "
                              f"{min(r['drop'] for r in rows):.2f} points; {final} not written. Try "
                              f"{'--search, --quantize dynamic' if args.quantize == 'int8' else '--quantize int8'} or "
                              "--keep-float for the layers that suffer")
        best = max(passing, key=lambda i: (rows[i]["top1"], candidates[i].agree, -i))
        chosen = candidates[best]
        threads = len(os.sched_getaffinity(0))
        latency = {"batch": 1, "threads": threads, "fp32_p50_ms": round(latency_ms(fp32, trained.preprocess.size,
                                                                                  threads), 3),
                   "int8_p50_ms": round(latency_ms(chosen.path, trained.preprocess.size, threads), 3)}
        shutil.copyfile(chosen.path, target)
    return {
        "quantization": {**chosen.settings.as_dict(), "reduce_range_choice": args.reduce_range,
                         "exporting_cpu_vnni": q.cpu_has_vnni(), "float_head": chosen.float_head,
                         "calibration": None if calibration is None else calibration.describe(
                             chosen.settings.method),
                         "search": rows if args.search else None},
        # Without test-time augmentation, fp32 and int8 alike (evaluate applies a run's train.tta).
        "accuracy_gate": {"split": "val", "data": str(Path(trained.cfg.data.path).resolve()), "tta": "none",
                          "images": images,
                          "fp32_top1": round(fp32_top1, 3), "int8_top1": rows[best]["top1"],
                          "drop": rows[best]["drop"], "max_drop": args.max_drop,
                          "agree_with_fp32": chosen.agree},
        "file_bytes": target.stat().st_size,
        "fp32_file_bytes": fp32.stat().st_size,
        "latency": latency,
    }
