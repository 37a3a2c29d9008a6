"""The input contract of an exported model: the JSON file beside it (`<model file>.json`) that tells a
consumer everything needed to use the model without this package: how to turn an image file into the
input tensor, what the outputs mean, where the model came from and how well it did.

`build_contract` writes what `python -m visiontrain export` knows; `read_contract` is what
`python -m visiontrain predict --model model.onnx` reads back, refusing a file that lacks a key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visiontrain.data.preprocess import EvalPreprocess
from visiontrain.deploy.trained import TrainedModel
from visiontrain.infra import fileio
from visiontrain.infra.errors import UsageError

VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def contract_path(model_file: Path) -> Path:
    return Path(model_file).with_name(Path(model_file).name + ".json")


def build_contract(trained: TrainedModel, model_file: Path, fmt: str, precision: str, batch_size: int | None,
                   opset: int | None, check: dict[str, Any]) -> dict[str, Any]:
    preprocess, d = trained.preprocess, trained.cfg.data
    batch: int | str = "batch" if batch_size is None else batch_size
    return {
        "contract_version": VERSION,
        "file": Path(model_file).name,
        "format": fmt,
        "onnx_opset": opset,
        "precision": precision,  # inside the model; its input and output are float32 whatever this says
        "batch_size": "dynamic" if batch_size is None else batch_size,
        "input": {
            "name": INPUT_NAME,
            "shape": [batch, 3, preprocess.size, preprocess.size],
            "dtype": "float32",
            "layout": "NCHW",
            "channel_order": "RGB",
            "image_size": preprocess.size,
            "preprocess": preprocess.describe(),
            "normalize": "(pixel / 255 - mean) / std, per channel, pixel in 0..255",
            "mean": list(d.mean),
            "std": list(d.std),
        },
        "output": {"name": OUTPUT_NAME, "shape": [batch, len(trained.class_names)], "dtype": "float32",
                   "meaning": "logits: softmax over the last axis gives the class probabilities"},
        "class_names": list(trained.class_names),
        "model": {"name": trained.cfg.model.name, "num_classes": trained.cfg.model.num_classes,
                  "width": trained.cfg.model.width, "weights": trained.weights, "ema": trained.ema},
        # Absolute: `evaluate` and `bench deploy` read them back from wherever they are started.
        "training_run": {"dir": str(Path(trained.run_dir).resolve()) if trained.run_dir else None,
                         "val_top1": trained.top1, "data": str(Path(d.path).resolve()), "recipe": d.recipe},
        "export_check": check,
    }


@dataclass
class Contract:
    """What prediction needs from the JSON file."""

    preprocess: EvalPreprocess
    mean: list[float]
    std: list[float]
    class_names: list[str]
    input_name: str
    batch_size: int | None  # None: any batch size
    model_name: str = ""
    recipe: str = ""  # the training run's data.recipe
    training_dir: str | None = None  # the training run's directory, where it was exported
    data_path: str | None = None  # the training run's data.path


def read_contract(model_file: Path) -> Contract:
    path = contract_path(model_file)
    if not path.is_file():
        raise UsageError(f"{model_file} has no input contract {path} beside it; export the model with "
                         "python -m visiontrain export, which writes both")
    raw = fileio.read_json(path, "input contract")
    try:
        spec, preprocess = raw["input"], raw["input"]["preprocess"]
        names = [str(name) for name in raw["class_names"]]
        mean, std = [float(v) for v in spec["mean"]], [float(v) for v in spec["std"]]
        batch = raw["batch_size"]
        run = raw.get("training_run") or {}
        contract = Contract(EvalPreprocess(int(spec["image_size"]), int(preprocess["resize"]["shorter_side"])),
                            mean, std, names, str(spec["name"]), None if batch == "dynamic" else int(batch),
                            str((raw.get("model") or {}).get("name") or ""), str(run.get("recipe") or ""),
                            run.get("dir"), run.get("data"))
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(f"input contract {path} is incomplete or malformed ({type(err).__name__}: {err}); "
                         "export the model again") from None
    if len(mean) != 3 or len(std) != 3 or len(names) < 1:
        raise UsageError(f"input contract {path} needs 3 mean and 3 std values and at least one class name")
    return contract
