"""Typed configuration: dataclass sections, YAML files, dotted CLI overrides, validation.

`load_config(path, overrides)` merges, in order: the defaults below, the YAML file,
then `section.key=value` overrides. Unknown keys, wrong types and impossible values
raise `UsageError` with one line that names the key, the value and what is allowed.
The defaults are the documented default run: CIFAR-10, ResNet-18 (CIFAR stem).
"""

from __future__ import annotations

import difflib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from visiontrain.evaluate.tta import TTA_MODES
from visiontrain.infra.errors import UsageError
from visiontrain.models import CIFAR_MODEL_NAMES, MODEL_NAMES

CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]


@dataclass
class RunConfig:
    dir: str = "runs/cifar10_resnet18"  # the run directory: config, metrics, checkpoints, weights, report
    seed: int = 0  # model init, data order and augmentation all follow from it
    # true: a run dir holding checkpoints is resumed; false: an existing run dir is refused.
    resume: bool = True
    device: str = "auto"  # auto | cpu | cuda
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)


@dataclass
class DataConfig:
    # ffcv | torchvision | device (the whole dataset in device memory, augmented there: CIFAR-sized data)
    # | random (random tensors made on the device: no input pipeline)
    loader: str = "ffcv"
    path: str = "data/cifar10"  # ffcv: train.beton/val.beton/meta.json; torchvision: image folders or CIFAR batches
    recipe: str = "cifar"  # cifar (pad-and-translate) | imagenet (random-resized-crop)
    image_size: int = 32  # training resolution
    val_image_size: int = 32  # evaluation resolution
    val_crop_ratio: float = 0.875  # imagenet recipe: center crop covers this fraction
    crop_padding: int = 4  # cifar recipe: random translation of up to this many pixels
    cutout: int = 0  # cifar recipe: side of a square filled with the mean colour; 0 = off
    flip: bool = True  # random horizontal flip (both recipes)
    # With flip: epoch 0 flips a fair coin per image, each later epoch mirrors exactly the
    # images the previous one did not (every image is seen both ways in any two epochs).
    alternate_flip: bool = False
    mean: List[float] = field(default_factory=lambda: list(CIFAR10_MEAN))  # per channel (R, G, B), in [0, 1]
    std: List[float] = field(default_factory=lambda: list(CIFAR10_STD))  # per channel (R, G, B), in (0, 1]
    num_workers: int = 2  # torchvision: DataLoader processes; ffcv: decoding threads
    os_cache: bool = True  # ffcv: read through the OS page cache (best when the file fits in RAM)
    batches_ahead: int = 3  # ffcv: batches prepared ahead of the training loop
    # Progressive resizing (ffcv + imagenet recipe): training resolution min_res up to
    # ramp_start_epoch, linear to max_res at ramp_end_epoch, rounded down to res_multiple.
    progressive_resizing: bool = False
    min_res: int = 160  # progressive resizing: first resolution
    max_res: int = 192  # progressive resizing: final resolution
    ramp_start_epoch: int = 0  # progressive resizing: last epoch at min_res
    ramp_end_epoch: int = 0  # progressive resizing: first epoch at max_res
    res_multiple: int = 32  # progressive resizing: resolutions are multiples of this
    # Part of a dataset (ffcv and torchvision loaders): these class indices, renumbered
    # 0..k-1 in this order (empty = all), and this fraction of each class's training
    # samples, drawn with subset_seed (independent of run.seed: every run sees the same).
    classes: List[int] = field(default_factory=list)
    train_fraction: float = 1.0  # of each class's training samples, in (0, 1]
    subset_seed: int = 0  # draws the train_fraction subset
    random_train_samples: int = 2048  # data.loader=random: how many random training tensors
    random_val_samples: int = 512  # data.loader=random: how many random validation tensors


@dataclass
class ModelConfig:
    name: str = "cifar_resnet18"  # a torchvision ResNet (ImageNet stem) or a CIFAR variant (3x3 stem)
    num_classes: int = 10  # must equal the dataset's class count (after data.classes)
    width: int = 64  # base channel count of the CIFAR models (cifar_resnet18, resnet9)
    zero_init_residual: bool = False  # zero the last BN of each residual block
    channels_last: bool = True  # NHWC weights and inputs: faster convolutions on tensor cores
    compile: bool = False  # torch.compile the model (the first steps include compilation)
    # torch.compile mode: default | reduce-overhead (CUDA graphs: one launch replays the whole
    # forward and backward, for short steps the host cannot keep up with) | max-autotune
    compile_mode: str = "default"


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.5  # peak learning rate for the global batch size
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    weight_decay: float = 5e-4  # L2 (sgd) or decoupled (adamw) weight decay
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    eps: float = 1e-8  # adamw
    no_decay_bn_bias: bool = True  # no weight decay on BatchNorm parameters and biases
    backbone_lr_mult: float = 1.0  # lr of every parameter outside the classifier head, relative to optim.lr
    # One kernel per update for all parameters (torch's fused SGD/AdamW); false: one per tensor group
    # (foreach). DDP only: under parallel.strategy=deepspeed the update is foreach.
    fused: bool = True


@dataclass
class ScheduleConfig:
    # Per-iteration learning-rate factor; every schedule starts with a linear warmup.
    name: str = "triangular"  # cosine | step | triangular | constant
    warmup_epochs: float = 2.0  # FFCV CIFAR-10 recipe: lr peaks at epoch 2 of 24
    min_lr_ratio: float = 0.0  # cosine/triangular end at lr * min_lr_ratio
    milestones: List[float] = field(default_factory=list)  # step: epochs where lr *= gamma
    gamma: float = 0.1  # step: lr factor at each milestone


@dataclass
class TrainConfig:
    epochs: int = 24  # passes over the training set
    batch_size: int = 512  # global: images per optimizer step over all processes
    grad_accum_steps: int = 1  # micro-batches per optimizer step (same result, less memory)
    precision: str = "bf16"  # fp32 | bf16 | fp16 (fp16 adds a GradScaler)
    grad_clip_norm: float = 0.0  # 0 = off
    label_smoothing: float = 0.1  # of the training loss (validation loss is plain cross-entropy)
    ema: bool = False  # keep an exponential moving average of the weights (evaluated and exported too)
    ema_decay: float = 0.999  # per optimizer step
    eval_every_epochs: int = 1  # and always after the last epoch
    # Test-time augmentation of every evaluation (and the final report): none | flip (image and
    # mirror) | flip_translate (also one-pixel shifts); visiontrain/evaluate/tta.py.
    tta: str = "none"
    monitor: str = "top1"  # validation metric that decides the best checkpoint: top1 | top5 | loss
    # Stop after this many evaluations without improvement of `monitor` (0 = off);
    # an early-stopped run ends with its best checkpoint's weights.
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0  # smaller improvements do not count
    restore_best: bool = False  # end every run with the best checkpoint's weights (implied by early stopping)


@dataclass
class FinetuneConfig:
    # Starting weights: a run directory (its weights.safetensors, else its newest checkpoint),
    # a .safetensors file, or a torchvision ResNet state dict (.pth/.pt). Empty = random init.
    init_from: str = ""
    use_ema: bool = False  # a run directory's EMA weights
    keep_head: bool = False  # refuse a classifier head of another class count instead of replacing it
    freeze: str = "none"  # none | backbone (linear probe) | stages:K (stem + first K stages) | bn


@dataclass
class CheckpointConfig:
    every_epochs: int = 1  # 0 = only at the end
    every_steps: int = 0  # 0 = off
    keep_last: int = 2  # periodic checkpoints kept; the best one (by train.monitor) is kept in addition
    # On SIGUSR1/SIGTERM: checkpoint at the next step boundary and exit with code 3. With
    # several processes, ranks agree on a stop request every this many steps (one all-reduce).
    signal_check_steps: int = 10


@dataclass
class ParallelConfig:
    strategy: str = "ddp"  # ddp (DistributedDataParallel) | deepspeed (ZeRO stage from the JSON)
    deepspeed_config: str = ""  # deepspeed: JSON file, e.g. configs/deepspeed/zero2.json
    find_unused_parameters: bool = False  # ddp


@dataclass
class LogConfig:
    every_steps: int = 50  # read losses from the device (a host sync) this often
    progress_bar: bool = True  # rank 0, on stderr
    tensorboard: bool = True  # RUN_DIR/tb/
    plots: bool = True  # RUN_DIR/curves.png at the end
    report: bool = True  # evaluation report of the final weights in RUN_DIR/eval/
    # Each rank writes the sample indices it drew per epoch to ranks/ (data-order audits).
    sample_ids: bool = False


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    log: LogConfig = field(default_factory=LogConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "run.device": ("auto", "cpu", "cuda"),
    "data.loader": ("ffcv", "torchvision", "device", "random"),
    "data.recipe": ("cifar", "imagenet"),
    "optim.name": ("sgd", "adamw"),
    "schedule.name": ("cosine", "step", "triangular", "constant"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "parallel.strategy": ("ddp", "deepspeed"),
    "train.monitor": ("top1", "top5", "loss"),
    "train.tta": TTA_MODES,
    "model.compile_mode": ("default", "reduce-overhead", "max-autotune"),
    "model.name": MODEL_NAMES,
}
FREEZE_POLICIES = "none, backbone, stages:K (K = 1..4), bn"


# Keys renamed in 0.2; the old spelling still works for one release, with a warning naming the new key.
RENAMED_KEYS = {
    "data.backend": "data.loader",
    "data.synthetic_train_samples": "data.random_train_samples",
    "data.synthetic_val_samples": "data.random_val_samples",
    "backend.name": "parallel.strategy",
    "backend.deepspeed_config": "parallel.deepspeed_config",
    "backend.find_unused_parameters": "parallel.find_unused_parameters",
}
RENAMED_VALUES = {("data.loader", "synthetic"): "random"}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                environ: Mapping[str, str] | None = None) -> Config:
    """Defaults ← YAML file ← `key=value` overrides ← launcher settings (`environ`), validated once.

    `environ` is given by entry points that may run under `accelerate launch`: its
    settings are checked against the config and may select the DeepSpeed strategy.
    Raises UsageError.
    """
    merged = OmegaConf.structured(Config)
    if path is not None:
        merged = _merge(merged, _renamed_yaml(_read_yaml(Path(path)), str(path)), f"in {path}")
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r} is not of the form section.key=value")
        key, _, value = item.partition("=")
        key, value = _current_name(key, value, f"override {item!r}")
        dotted = f"{key}={value}" if value else f"{key}=''"  # `key=` means the empty string, not null
        merged = _merge(merged, OmegaConf.from_dotlist([dotted]), f"in override {item!r}")
    try:
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:  # an interpolation such as ${nope} resolves only here
        key = getattr(err, "full_key", None) or "?"
        detail = (getattr(err, "msg", None) or str(err)).splitlines()[0]
        raise UsageError(f"config key '{key}' cannot be resolved: {detail}; use a plain value or an "
                         "interpolation of an existing key, e.g. ${train.epochs}") from None
    if environ is not None:
        apply_launcher_settings(cfg, environ)
    validate(cfg)
    return cfg


def _current_name(key: str, value: Any, where: str) -> tuple[str, Any]:
    """The key (and value) under their current names; a renamed one is accepted with a warning."""
    if key in RENAMED_KEYS:
        warnings.warn(f"config key '{key}' ({where}) is deprecated and will be removed in the next release; "
                      f"use '{RENAMED_KEYS[key]}'", FutureWarning, stacklevel=2)
        key = RENAMED_KEYS[key]
    if isinstance(value, str) and (key, value) in RENAMED_VALUES:
        warnings.warn(f"{key}={value} ({where}) is deprecated and will be removed in the next release; "
                      f"use {key}={RENAMED_VALUES[key, value]}", FutureWarning, stacklevel=2)
        value = RENAMED_VALUES[key, value]
    return key, value


def _renamed_yaml(loaded: DictConfig, where: str) -> DictConfig:
    """The YAML's sections with renamed keys moved to their current names (interpolations kept)."""
    renamed: dict[str, Any] = {}
    for section, values in OmegaConf.to_container(loaded, resolve=False).items():
        if not isinstance(values, dict):
            renamed[section] = values  # left for the merge to report
            continue
        for key, value in values.items():
            new_key, value = _current_name(f"{section}.{key}", value, f"in {where}")
            new_section, _, new_name = new_key.partition(".")
            if new_name in renamed.get(new_section, {}):
                raise UsageError(f"{where} sets '{new_key}' twice, once under its old name; keep '{new_key}'")
            renamed.setdefault(new_section, {})[new_name] = value
    return OmegaConf.create(renamed)


def apply_launcher_settings(cfg: Config, environ: Mapping[str, str]) -> None:
    """Check `accelerate launch`'s settings against the config; its DeepSpeed config selects that strategy.

    Each setting has one home (the run config): a launcher flag that would be silently
    ignored, or that contradicts the config, is refused.
    """
    if "ACCELERATE_MIXED_PRECISION" in environ and "MASTER_ADDR" in environ and "RANK" not in environ:
        # accelerate's simple launcher: more processes were asked for, one was started.
        raise UsageError(
            "accelerate launch started 1 process although --num_processes > 1 was asked for (no GPU found); "
            "for several CPU processes use `accelerate launch --multi_gpu --num_processes N` or "
            "`torchrun --nproc_per_node N`"
        )
    flag = environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if {"no": "fp32"}.get(flag, flag) not in ("fp32", cfg.train.precision):
        raise UsageError(f"accelerate launch --mixed_precision {flag} contradicts train.precision="
                         f"{cfg.train.precision}; set train.precision (the one precision setting) and drop the flag")
    dynamo = environ.get("ACCELERATE_DYNAMO_BACKEND", "no").lower()
    if dynamo not in ("no", ""):
        raise UsageError(f"accelerate launch --dynamo_backend {dynamo} is not used by train.py; "
                         f"set model.compile=true instead (now {str(cfg.model.compile).lower()})")
    if environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        return
    json_file = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if not json_file:
        raise UsageError("accelerate launch selected DeepSpeed without a deepspeed_config_file; use an accelerate "
                         "config with one, e.g. configs/accelerate/deepspeed_zero2.yaml")
    p = cfg.parallel
    if p.deepspeed_config and os.path.abspath(p.deepspeed_config) != os.path.abspath(json_file):
        raise UsageError(f"accelerate's deepspeed_config_file {json_file} contradicts parallel.deepspeed_config="
                         f"{p.deepspeed_config}; keep one")
    for variable, key, value in (("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "train.grad_accum_steps",
                                  cfg.train.grad_accum_steps),
                                 ("ACCELERATE_GRADIENT_CLIPPING", "train.grad_clip_norm", cfg.train.grad_clip_norm)):
        if variable in environ and float(environ[variable]) != float(value):
            raise UsageError(f"accelerate's {variable.lower()} = {environ[variable]} contradicts {key}={value}; "
                             f"set {key} only")
    p.strategy, p.deepspeed_config = "deepspeed", json_file


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def all_keys() -> list[str]:
    """Every dotted key the config accepts, e.g. 'optim.lr'."""
    return [f"{section}.{key}" for section, values in to_dict(Config()).items() for key in values]


def _read_yaml(path: Path) -> DictConfig:
    if path.is_dir():
        raise UsageError(f"config file {path} is a directory; give a YAML file, e.g. configs/cifar10/resnet18.yaml")
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends: report the first line only
        raise UsageError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise UsageError(f"config file {path} must hold a mapping of sections, not {type(loaded).__name__}")
    return loaded


def _merge(base: DictConfig, extra: DictConfig, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, extra)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise UsageError(_describe_merge_error(err, extra, where)) from None


def _describe_merge_error(err: OmegaConfBaseException, extra: DictConfig, where: str) -> str:
    key = getattr(err, "full_key", None) or ""
    detail = (getattr(err, "msg", None) or str(err)).splitlines()[0]
    if type(err).__name__ == "ConfigKeyError":
        known = all_keys()
        sections = sorted({k.split(".")[0] for k in known})
        candidates = known if "." in key else sections
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else f"; sections: {', '.join(sections)}"
        return f"unknown config key '{key}' {where}{hint}"
    if not key:
        # e.g. `optim=3`: a whole section replaced by a scalar
        return f"invalid config {where}: {detail}; expected section.key=value"
    return f"config key '{key}' {where}: {detail}"


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise UsageError(f"config key '{key}' = {value!r} is invalid: {allowed}")


def validate(cfg: Config) -> None:
    """Value checks that need no knowledge of the launch (the world size is checked by `BatchPlan`)."""
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UsageError(f"config key '{key}' = {value!r} is invalid: allowed {', '.join(choices)}{hint}")
    m, o, s, t, d = cfg.model, cfg.optim, cfg.schedule, cfg.train, cfg.data
    _check(m.num_classes >= 2, "model.num_classes", m.num_classes, "must be >= 2")
    _check(m.width >= 1, "model.width", m.width, "must be >= 1")
    _check(
        m.width == 64 or m.name in CIFAR_MODEL_NAMES, "model.width", m.width,
        f"only the CIFAR models ({', '.join(CIFAR_MODEL_NAMES)}) have a width; leave it at 64",
    )
    _check(d.flip or not d.alternate_flip, "data.alternate_flip", d.alternate_flip,
           "alternates the flips of data.flip=true; set data.flip=true or leave it false")
    _check(m.compile or m.compile_mode == "default", "model.compile_mode", m.compile_mode,
           "takes effect only with model.compile=true; set both")
    _check(math.isfinite(o.lr) and o.lr > 0, "optim.lr", o.lr, "must be a finite number > 0")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _check(0 <= o.momentum < 1, "optim.momentum", o.momentum, "must be in [0, 1)")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas, "two numbers in [0, 1)")
    _check(o.eps > 0, "optim.eps", o.eps, "must be > 0")
    _check(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _check(t.grad_accum_steps >= 1, "train.grad_accum_steps", t.grad_accum_steps, "must be >= 1")
    _check(t.grad_clip_norm >= 0, "train.grad_clip_norm", t.grad_clip_norm, "must be >= 0 (0 = off)")
    _check(0 <= t.label_smoothing < 1, "train.label_smoothing", t.label_smoothing, "must be in [0, 1)")
    _check(0 < t.ema_decay < 1, "train.ema_decay", t.ema_decay, "must be in (0, 1)")
    _check(t.eval_every_epochs >= 1, "train.eval_every_epochs", t.eval_every_epochs, "must be >= 1")
    _check(0 <= s.warmup_epochs < t.epochs, "schedule.warmup_epochs", s.warmup_epochs,
           f"must be in [0, train.epochs={t.epochs})")
    _check(0 <= s.min_lr_ratio <= 1, "schedule.min_lr_ratio", s.min_lr_ratio, "must be in [0, 1]")
    _check(s.gamma > 0, "schedule.gamma", s.gamma, "must be > 0")
    _check(all(0 < e <= t.epochs for e in s.milestones) and list(s.milestones) == sorted(s.milestones),
           "schedule.milestones", s.milestones, f"increasing epochs in (0, train.epochs={t.epochs}]")
    _check(s.name != "step" or len(s.milestones) > 0, "schedule.milestones", s.milestones,
           "the step schedule needs at least one milestone")
    _check(d.image_size >= 8, "data.image_size", d.image_size, "must be >= 8")
    _check(d.val_image_size >= 8, "data.val_image_size", d.val_image_size, "must be >= 8")
    _check(0 < d.val_crop_ratio <= 1, "data.val_crop_ratio", d.val_crop_ratio, "must be in (0, 1]")
    _check(0 <= d.crop_padding <= d.image_size // 2, "data.crop_padding", d.crop_padding,
           f"must be in [0, data.image_size/2={d.image_size // 2}]")
    _check(0 <= d.cutout <= d.image_size, "data.cutout", d.cutout, f"must be in [0, data.image_size={d.image_size}]")
    _check(len(d.mean) == 3 and all(0 <= v <= 1 for v in d.mean), "data.mean", d.mean,
           "three numbers (R, G, B) in [0, 1]")
    _check(len(d.std) == 3 and all(0 < v <= 1 for v in d.std), "data.std", d.std,
           "three numbers (R, G, B) in (0, 1], as fractions of the pixel range")
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0")
    _check(d.batches_ahead >= 1, "data.batches_ahead", d.batches_ahead, "must be >= 1")
    if d.progressive_resizing:
        _check(d.loader == "ffcv" and d.recipe == "imagenet", "data.progressive_resizing", True,
               "needs data.loader=ffcv and data.recipe=imagenet")
        _check(8 <= d.min_res <= d.max_res, "data.min_res", d.min_res, f"must be in [8, data.max_res={d.max_res}]")
        _check(d.res_multiple >= 1, "data.res_multiple", d.res_multiple, "must be >= 1")
        _check(0 <= d.ramp_start_epoch <= d.ramp_end_epoch <= t.epochs, "data.ramp_end_epoch", d.ramp_end_epoch,
               f"need 0 <= data.ramp_start_epoch ({d.ramp_start_epoch}) <= data.ramp_end_epoch <= train.epochs")
    _check(d.random_train_samples >= 1, "data.random_train_samples", d.random_train_samples, "must be >= 1")
    _check(d.random_val_samples >= 1, "data.random_val_samples", d.random_val_samples, "must be >= 1")
    _check(all(c >= 0 for c in d.classes) and len(set(d.classes)) == len(d.classes), "data.classes", d.classes,
           "distinct class indices >= 0 (empty = all classes)")
    _check(0 < d.train_fraction <= 1, "data.train_fraction", d.train_fraction, "must be in (0, 1]")
    _check(o.backbone_lr_mult >= 0, "optim.backbone_lr_mult", o.backbone_lr_mult, "must be >= 0 (1 = same lr)")
    _check(t.early_stop_patience >= 0, "train.early_stop_patience", t.early_stop_patience, "must be >= 0 (0 = off)")
    _check(t.early_stop_min_delta >= 0, "train.early_stop_min_delta", t.early_stop_min_delta, "must be >= 0")
    f = cfg.finetune
    _check(parse_freeze(f.freeze) is not None, "finetune.freeze", f.freeze, f"allowed {FREEZE_POLICIES}")
    _check(bool(f.init_from) or not f.use_ema, "finetune.use_ema", f.use_ema,
           "only read with finetune.init_from (a run directory)")
    _check(bool(f.init_from) or not f.keep_head, "finetune.keep_head", f.keep_head,
           "only read with finetune.init_from")
    c = cfg.checkpoint
    _check(c.every_epochs >= 0, "checkpoint.every_epochs", c.every_epochs, "must be >= 0 (0 = only at the end)")
    _check(c.every_steps >= 0, "checkpoint.every_steps", c.every_steps, "must be >= 0 (0 = off)")
    _check(c.keep_last >= 1, "checkpoint.keep_last", c.keep_last, "must be >= 1")
    _check(c.signal_check_steps >= 1, "checkpoint.signal_check_steps", c.signal_check_steps, "must be >= 1")
    _check(cfg.log.every_steps >= 1, "log.every_steps", cfg.log.every_steps, "must be >= 1")
    _check(bool(cfg.run.dir.strip()), "run.dir", cfg.run.dir, "must be a directory path")
    p = cfg.parallel
    if p.strategy == "deepspeed":
        _check(bool(p.deepspeed_config), "parallel.deepspeed_config", p.deepspeed_config,
               "parallel.strategy=deepspeed needs a DeepSpeed JSON, e.g. configs/deepspeed/zero2.json")
        _check(not m.compile, "model.compile", m.compile, "not supported with parallel.strategy=deepspeed; use ddp")
    else:
        _check(not p.deepspeed_config, "parallel.deepspeed_config", p.deepspeed_config,
               "only read with parallel.strategy=deepspeed; set that too, or leave it empty")


def parse_freeze(policy: str) -> tuple[str, int] | None:
    """'stages:2' -> ('stages', 2); 'none'/'backbone'/'bn' -> (policy, 0); anything else -> None."""
    if policy in ("none", "backbone", "bn"):
        return policy, 0
    name, _, count = policy.partition(":")
    if name == "stages" and count.isdigit() and 1 <= int(count) <= 4:
        return name, int(count)
    return None


@dataclass(frozen=True)
class BatchPlan:
    """How the global batch is split: the one place micro-batch and accumulation are decided.

    One optimizer step consumes `global_batch` images: `accum_steps` micro-batches of
    `micro_batch` images on each of `world_size` processes.
    """

    global_batch: int
    world_size: int
    accum_steps: int
    micro_batch: int

    @classmethod
    def for_world(cls, train: TrainConfig, world_size: int) -> BatchPlan:
        per_step = world_size * train.grad_accum_steps
        if train.batch_size % per_step:
            raise UsageError(
                f"config key 'train.batch_size' = {train.batch_size} is invalid: the global batch must be divisible "
                f"by world size x train.grad_accum_steps = {world_size} x {train.grad_accum_steps} = {per_step}"
            )
        return cls(train.batch_size, world_size, train.grad_accum_steps, train.batch_size // per_step)

    @classmethod
    def of_micro_batch(cls, micro_batch: int, world_size: int = 1) -> BatchPlan:
        """Batches of `micro_batch` per process and no accumulation (evaluation, loader benchmarks)."""
        return cls(micro_batch * world_size, world_size, 1, micro_batch)

    def steps_per_epoch(self, num_samples: int) -> int:
        """Optimizer steps in one epoch of `num_samples` (each rank drops its partial last step)."""
        steps = (num_samples // self.world_size) // self.micro_batch // self.accum_steps
        if steps == 0:
            raise UsageError(
                f"config key 'train.batch_size' is too large: {num_samples} training samples over {self.world_size} "
                f"process(es) do not fill one optimizer step of {self.global_batch} images"
            )
        return steps
