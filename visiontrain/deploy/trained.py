"""A trained model and what it expects: weights, model settings, class names, input size, its accuracy.

A source is a run directory (its config.yaml, summary.json and weights.safetensors; the newest
readable checkpoint when the weights were not exported; `ema` for the EMA weights) or a weights
file (.safetensors written by train.py records model.name/num_classes/width; a torchvision
state dict needs model.* given). Shared by python -m visiontrain evaluate, export and predict.
Weights are read as plain tensors only (safetensors, `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from visiontrain import config
from visiontrain.config import Config, FinetuneConfig
from visiontrain.data import augment
from visiontrain.data.preprocess import EvalPreprocess
from visiontrain.infra import fileio
from visiontrain.infra.errors import UsageError
from visiontrain.models import build_model, spec_of
from visiontrain.train.finetune import load_initial_weights

log = logging.getLogger(__name__)

# What only matters to training is switched off: loading a trained model trains nothing.
NOT_TRAINING = ["finetune.init_from=", "finetune.use_ema=false", "finetune.keep_head=false", "finetune.freeze=none",
                "parallel.strategy=ddp", "parallel.deepspeed_config=", "model.compile=false"]


def weights_metadata(path: Path) -> list[str]:
    """model.* overrides recorded in a .safetensors written by train.py (empty for others)."""
    if path.suffix != ".safetensors":
        return []
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return []  # unreadable: the weights loader reports it with the path
    keys = {"model": "model.name", "num_classes": "model.num_classes", "width": "model.width"}
    return [f"{keys[key]}={meta[key]}" for key in keys if key in meta]


def run_dir_of(source: Path) -> Path | None:
    """The run directory a source belongs to: itself, or the directory of a weights file train.py wrote there."""
    if source.is_dir():
        return source
    if source.parent.joinpath("config.yaml").is_file() and source.name.startswith("weights"):
        return source.parent
    return None


def resolve_config(source: Path, config_file: str | None, overrides: Sequence[str],
                   data: str | None = None) -> tuple[Config, Path | None]:
    """The config that describes `source`'s model and data, and its run directory (None for a lone file)."""
    run_dir = run_dir_of(source)
    base = config_file
    if base is None and run_dir is not None and (run_dir / "config.yaml").is_file():
        base = str(run_dir / "config.yaml")
    extra = weights_metadata(source) + list(overrides) + ([f"data.path={data}"] if data else [])
    return config.load_config(base, extra + NOT_TRAINING), run_dir


def dataset_class_names(cfg: Config) -> list[str] | None:
    """Class names of the dataset at data.path after data.classes, or None if it is not there to read."""
    path = Path(cfg.data.path)
    names: list[str] | None = None
    if (path / "meta.json").is_file():
        meta = fileio.read_json(path / "meta.json", "dataset description")
        names = meta.get("class_names") if isinstance(meta, dict) else None
    elif (path / "train").is_dir():
        names = sorted(entry.name for entry in (path / "train").iterdir() if entry.is_dir())
    if not isinstance(names, list):
        return None
    kept = list(cfg.data.classes) or list(range(len(names)))
    return [str(names[c]) for c in kept] if all(0 <= c < len(names) for c in kept) else None


def class_names_of(cfg: Config, run_dir: Path | None) -> list[str]:
    """The names of the model's outputs: recorded by the run (summary.json, its evaluation report) or read from
    the dataset; `class_<i>` with a warning when none of these is available."""
    found: list[str] | None = None
    for recorded in ((run_dir / "summary.json", "run summary"), (run_dir / "eval" / "eval.json", "evaluation report")
                     ) if run_dir else ():
        if recorded[0].is_file():
            names = fileio.read_json(*recorded).get("class_names")
            if isinstance(names, list) and len(names) == cfg.model.num_classes:
                found = [str(n) for n in names]
                break
    if found is None:
        found = dataset_class_names(cfg)
    if found is None or len(found) != cfg.model.num_classes:
        log.warning("class names unknown (no run summary, evaluation report or dataset at data.path=%s): "
                    "the outputs are called class_0..class_%d", cfg.data.path, cfg.model.num_classes - 1)
        found = [f"class_{i}" for i in range(cfg.model.num_classes)]
    return found


@dataclass
class TrainedModel:
    model: torch.nn.Module  # fp32, eval mode, on the CPU, contiguous memory format
    cfg: Config
    class_names: list[str]
    weights: str  # the file or checkpoint the weights came from
    run_dir: Path | None
    top1: float | None  # the run's final validation top-1 (%) of these weights, if recorded
    ema: bool

    @property
    def preprocess(self) -> EvalPreprocess:
        return EvalPreprocess.from_recipe(augment.eval_recipe(self.cfg.data))

    def images_from_files(self, paths: list[str], count: int, option: str = "--check-images") -> torch.Tensor:
        """Up to `count` images under `paths`, preprocessed and normalized as evaluation does (float32, CPU);
        unreadable files are skipped with a warning naming `option`."""
        from visiontrain.data.base import DeviceNormalizer
        from visiontrain.data.preprocess import image_files
        from visiontrain.data.sources import UnreadableImage, read_image

        preprocess, pixels = self.preprocess, []
        for path in image_files(paths):
            try:
                pixels.append(preprocess(read_image(path)))
            except UnreadableImage as err:
                log.warning("%s: %s; skipped", option, err)
            if len(pixels) == count:
                break
        if not pixels:
            raise UsageError(f"{option} {' '.join(paths)}: no readable image")
        d = self.cfg.data
        return DeviceNormalizer(d.mean, d.std, torch.device("cpu"), False)(torch.stack(pixels))

    def eval_data(self, batch: int, split: str = "val", **data: Any):
        """The run's eval loader over `split` ("val", or "train" through the evaluation preprocessing), one CPU
        process, contiguous float32 images; `data`: data.* settings changed for it (train_fraction, ...)."""
        import copy

        from visiontrain.data import build_data
        from visiontrain.parallel.batch_plan import BatchPlan
        from visiontrain.parallel.runtime import Runtime

        cfg = copy.deepcopy(self.cfg)
        cfg.model.channels_last = False
        for key, value in data.items():
            setattr(cfg.data, key, value)
        cpu = torch.device("cpu")
        runtime = Runtime(accelerator=None, device=cpu, rank=0, world_size=1, local_rank=0, launcher="single")
        return build_data(cfg, runtime, BatchPlan.of_micro_batch(batch), train=False, eval_split=split)


def load_trained(source: str | Path, ema: bool = False, config_file: str | None = None,
                 overrides: Sequence[str] = (), key: str = "--model", data: str | None = None) -> TrainedModel:
    """The model of a run directory or weights file, with the config that describes it (`data`: another
    data.path); UsageError (one line, naming `key`) if it cannot be had. Evaluate, export and predict
    all start here."""
    path = Path(source)
    if not path.exists():
        raise UsageError(f"{key}={str(source)!r} does not exist: give a run directory or a weights file "
                         "(.safetensors, .pth)")
    if ema and not path.is_dir():
        raise UsageError(f"--ema reads a run directory's EMA weights, but {key}={str(source)!r} is a file; "
                         "give the run directory, or its weights_ema.safetensors without --ema")
    if ema and (path / "weights.safetensors").is_file() and not (path / "weights_ema.safetensors").is_file():
        raise UsageError(f"--ema: the run {path} has no EMA weights (no weights_ema.safetensors: it did not set "
                         "train.ema=true); leave out --ema")
    cfg, run_dir = resolve_config(path, config_file, overrides, data)
    model = build_model(cfg.model)
    info = load_initial_weights(model, spec_of(cfg.model.name), FinetuneConfig(init_from=str(path), use_ema=ema,
                                                                               keep_head=True), key=key)
    model.eval()
    return TrainedModel(model, cfg, class_names_of(cfg, run_dir), info["init_from"], run_dir,
                        _recorded_top1(run_dir, path, ema), ema)


def _recorded_top1(run_dir: Path | None, source: Path, ema: bool) -> float | None:
    if run_dir is None or not (run_dir / "summary.json").is_file():
        return None
    if source.is_file() and source.name not in ("weights.safetensors", "weights_ema.safetensors"):
        return None  # a file of its own beside a run: not the weights the summary measured
    summary: dict[str, Any] = fileio.read_json(run_dir / "summary.json", "run summary")
    final = summary.get("final_ema" if ema or source.name == "weights_ema.safetensors" else "final") or {}
    return final.get("top1")
