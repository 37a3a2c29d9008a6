"""Classify image files with a trained model: the PyTorch model of a run, or its ONNX export.

    python -m visiontrain predict --model RUN_DIR|WEIGHTS|model.onnx IMAGES_OR_DIRS...
        [--topk 5] [--batch-size 64] [--device auto|cpu|cuda] [--out predictions.csv|.json]
        [--tta flip|flip_translate] [--strict] [--ema] [-c CONFIG] [--threads N]

Images are preprocessed exactly as evaluation does (visiontrain.data.preprocess: decode to
RGB, shorter-side resize, centre crop; then the run's mean/std), so a run's validation
images get the predictions its evaluation report lists. A run directory or weights file
is run by PyTorch (as evaluation runs it); a .onnx file by ONNX Runtime, with the input
contract written beside it by `visiontrain export`. TorchScript and .pt2 files are
refused: loading them can run arbitrary code.

Output: one line per image (path, then the top-k classes with probabilities), or the
--out file (.csv or .json, written whole or not at all), and a summary line with the
throughput. Files that cannot be read are listed on stderr and skipped (--strict: stop,
exit 2). Exit codes: 0 done, 2 bad arguments or input (nothing written).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from visiontrain.data.base import DeviceNormalizer
from visiontrain.data.preprocess import EvalPreprocess, image_files
from visiontrain.data.sources import UnreadableImage, read_image
from visiontrain.deploy.inference import OnnxClassifier, TorchClassifier, inputs
from visiontrain.evaluate.tta import TTA_MODES, tta_logits
from visiontrain.infra import fileio
from visiontrain.infra.errors import ArgumentParser, UsageError, run_cli
from visiontrain.parallel.runtime import select_device
from visiontrain.parallel.threads import use_threads

REFUSED_SUFFIXES = (".pt2", ".jit", ".ts", ".torchscript", ".torchscript.pt")
OUTPUT_SUFFIXES = (".csv", ".json")


@dataclass
class Predictor:
    """A classifier with the preprocessing and class names that go with it."""

    classifier: TorchClassifier | OnnxClassifier
    preprocess: EvalPreprocess
    normalize: DeviceNormalizer
    class_names: list[str]

    @torch.no_grad()
    def probabilities(self, pixels: torch.Tensor, tta: str = "none") -> torch.Tensor:
        """uint8 N x 3 x H x W -> class probabilities N x C (float32, CPU). `tta`: the logits are averaged
        over that mode's views (tta.py), as python -m visiontrain evaluate --tta does."""
        return tta_logits(self.classifier, self.normalize(pixels), tta).softmax(dim=1)


def load_predictor(model: str, device: torch.device, ema: bool = False, config: str | None = None,
                   threads: int = 0) -> Predictor:
    path = Path(model)
    if path.suffix == ".onnx":
        if ema or config:
            raise UsageError(f"--ema and -c apply to a run directory or weights file, not to {model}")
        from visiontrain.deploy.contract import read_contract

        if not path.is_file():
            raise UsageError(f"--model {model} does not exist")
        contract = read_contract(path)
        classifier = OnnxClassifier(path, device, threads)
        if classifier.num_classes is not None and classifier.num_classes != len(contract.class_names):
            raise UsageError(f"--model {model} has {classifier.num_classes} outputs but its input contract names "
                             f"{len(contract.class_names)} classes; export the model again")
        size = contract.preprocess.size
        if any(isinstance(side, int) and side != size for side in classifier.input_shape[2:]):
            raise UsageError(f"--model {model} takes {classifier.input_shape[2:]} images but its input contract "
                             f"says {size}x{size}; export the model again")
        return Predictor(classifier, contract.preprocess, inputs(contract.mean, contract.std, classifier),
                         contract.class_names)
    if path.name.endswith(REFUSED_SUFFIXES):
        raise UsageError(f"--model {model}: TorchScript and torch.export files are not loaded (loading them can run "
                         "code); give the run directory, its weights (.safetensors) or an .onnx export")
    from visiontrain.deploy.trained import load_trained

    trained = load_trained(path, ema, config, key="--model")
    cfg = trained.cfg
    classifier = TorchClassifier(trained.model, device, cfg.model.channels_last, cfg.train.precision)
    return Predictor(classifier, trained.preprocess, inputs(list(cfg.data.mean), list(cfg.data.std), classifier),
                     trained.class_names)


@dataclass
class Prediction:
    path: str
    classes: list[str]
    probabilities: list[float]


def predict_files(predictor: Predictor, files: list[Path], batch_size: int, topk: int, tta: str = "none",
                  strict: bool = False, progress: bool = False
                  ) -> tuple[list[Prediction], list[tuple[str, str]], float]:
    """(predictions in file order, skipped (path, reason), seconds spent in the classifier)."""
    predictions: list[Prediction] = []
    skipped: list[tuple[str, str]] = []
    model_seconds = 0.0
    k = min(topk, len(predictor.class_names))
    bar = tqdm(total=len(files), unit="img", desc="predict", disable=None if progress else True, file=sys.stderr)
    for start in range(0, len(files), batch_size):
        chunk, pixels = [], []
        for path in files[start : start + batch_size]:
            try:
                pixels.append(predictor.preprocess(read_image(path)))
                chunk.append(path)
            except UnreadableImage as err:
                if strict:
                    raise UsageError(f"{err} (--strict)") from None
                skipped.append((str(path), str(err)))
        if pixels:
            began = time.perf_counter()
            probs = predictor.probabilities(torch.stack(pixels), tta)
            model_seconds += time.perf_counter() - began
            top = probs.topk(k, dim=1)
            for path, values, indices in zip(chunk, top.values.tolist(), top.indices.tolist()):
                predictions.append(Prediction(str(path), [predictor.class_names[i] for i in indices], values))
        bar.update(len(files[start : start + batch_size]))
    bar.close()
    return predictions, skipped, model_seconds


def render(predictions: list[Prediction], skipped: list[tuple[str, str]], suffix: str) -> str:
    if suffix == ".json":
        return json.dumps({"predictions": [{"path": p.path, "top": [{"class": c, "probability": v} for c, v in
                                                                      zip(p.classes, p.probabilities)]}
                                           for p in predictions],
                           "skipped": [{"path": path, "reason": why} for path, why in skipped]}, indent=2) + "\n"
    k = max((len(p.classes) for p in predictions), default=0)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path"] + [f"{field}_{rank}" for rank in range(1, k + 1) for field in ("class", "probability")])
    for p in predictions:
        writer.writerow([p.path] + [x for pair in zip(p.classes, p.probabilities) for x in (pair[0], f"{pair[1]:.6f}")])
    return text.getvalue()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m visiontrain predict", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory, weights file (.safetensors, .pth) or .onnx")
    parser.add_argument("images", nargs="+", metavar="IMAGES_OR_DIRS")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, help="predictions file: .csv or .json (default: lines on stdout)")
    parser.add_argument("--tta", default="none", choices=TTA_MODES)
    parser.add_argument("--strict", action="store_true", help="stop (exit 2) at the first unreadable file")
    parser.add_argument("--ema", action="store_true", help="a run directory's EMA weights")
    parser.add_argument("-c", "--config", help="config describing a weights file's model and data")
    parser.add_argument("--threads", type=int, default=0,
                        help="an .onnx model: ONNX Runtime's intra-op threads (default 0: one per physical core)")
    args = parser.parse_args(argv)
    if args.threads < 0:
        raise UsageError(f"--threads {args.threads} is invalid: >= 1, or 0 for ONNX Runtime's default")
    if args.threads and Path(args.model).suffix != ".onnx":
        raise UsageError("--threads sets ONNX Runtime's threads for an .onnx --model; PyTorch uses the cores "
                         "available to the process (OMP_NUM_THREADS)")
    if args.topk < 1 or args.batch_size < 1:
        raise UsageError(f"--topk {args.topk} / --batch-size {args.batch_size}: both must be >= 1")
    if args.out is not None and args.out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"--out {args.out}: allowed file types {', '.join(OUTPUT_SUFFIXES)}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    files = image_files(args.images)
    if not files:
        raise UsageError(f"no image files in {' '.join(args.images)}")
    use_threads()
    predictor = load_predictor(args.model, select_device(args.device, option="--device"), args.ema, args.config,
                               args.threads)
    classes = len(predictor.class_names)
    if args.topk > classes:
        print(f"--topk {args.topk}: the model has {classes} classes; all {classes} are listed", file=sys.stderr)
    began = time.perf_counter()
    progress = any(Path(name).is_dir() for name in args.images)
    predictions, skipped, model_seconds = predict_files(predictor, files, args.batch_size, args.topk,
                                                        args.tta, args.strict, progress)
    seconds = time.perf_counter() - began
    if not predictions:
        raise UsageError(f"none of the {len(files)} files is a readable image ({skipped[0][1]}); nothing written")
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if args.out is not None:
        fileio.write_text(args.out, render(predictions, skipped, args.out.suffix.lower()))
    else:
        for p in predictions:
            print("\t".join([p.path] + [f"{c} {v:.4f}" for c, v in zip(p.classes, p.probabilities)]))
    classifier = predictor.classifier
    print(f"predicted {len(predictions)} images ({len(skipped)} skipped) in {seconds:.2f} s: "
          f"{len(predictions) / seconds:.1f} images/s, {len(predictions) / model_seconds:.1f} images/s in the model "
          f"({classifier.backend} on {classifier.device_name}, "
          f"batch {args.batch_size}, tta {args.tta})" + (f"; wrote {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
