"""The whole config: `Config` (one field per section), every key's allowed values (`CHOICES`), and `validate`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from visiontrain.config.checks import choices_of
from visiontrain.config.sections import (
    AdversarialConfig,
    AugmentConfig,
    CheckpointConfig,
    DataConfig,
    FinetuneConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    log: LogConfig = field(default_factory=LogConfig)


# Dotted key -> allowed values, gathered from the sections' `choice` fields (the reference lists them).
CHOICES: dict[str, tuple[str, ...]] = {
    f"{section.name}.{name}": allowed
    for section in dataclasses.fields(Config)
    for name, allowed in choices_of(section.default_factory).items()  # type: ignore[arg-type]
}


def fill_model_defaults(cfg: Config) -> None:
    """Keys left to the model take its values: empty data.mean / data.std and data.val_crop_ratio=0 become the
    input contract of a timm or torchvision model's published weights (models/contract.py), else CIFAR-10's
    statistics and 0.875; an empty model.channels_last the model's memory-format choice. Runs before
    `validate`; a run's config.yaml then records the values used."""
    from visiontrain.config.sections import CIFAR10_MEAN, CIFAR10_STD
    from visiontrain.models import check_model_name, spec_of

    d, m = cfg.data, cfg.model
    if (d.mean or d.std) and d.val_crop_ratio and m.channels_last is not None:
        return  # one of mean/std alone is refused by DataConfig.check, after its value is checked
    check_model_name(m.name)
    spec = spec_of(m.name)
    if m.channels_last is None:
        m.channels_last = spec.channels_last
    if not d.mean and not d.std:
        d.mean, d.std = list(spec.mean or CIFAR10_MEAN), list(spec.std or CIFAR10_STD)
    d.val_crop_ratio = d.val_crop_ratio or spec.crop_ratio or 0.875


def fill_monitor(cfg: Config) -> None:
    """train.monitor=auto: robust_top1 when adversarial training checks robustness (a collapse must not
    leave the run with its best clean checkpoint), else top1. A run's config.yaml records the choice."""
    if cfg.train.monitor == "auto":
        cfg.train.monitor = "robust_top1" if cfg.adversarial.checks else "top1"


def validate(cfg: Config) -> None:
    """Value checks that need no knowledge of the launch (the world size is checked by `BatchPlan`).

    Each section checks itself first, so the rules below may rely on every section's own values being valid.
    """
    for section in dataclasses.fields(cfg):
        getattr(cfg, section.name).validate()
    d, m, s, t = cfg.data, cfg.model, cfg.schedule, cfg.train
    s.require(0 <= s.warmup_epochs < t.epochs, "warmup_epochs", f"must be in [0, train.epochs={t.epochs})")
    s.require(all(0 < e <= t.epochs for e in s.milestones) and list(s.milestones) == sorted(s.milestones),
              "milestones", f"increasing epochs in (0, train.epochs={t.epochs}]")
    if d.progressive_resizing:
        d.require(0 <= d.ramp_start_epoch <= d.ramp_end_epoch <= t.epochs, "ramp_end_epoch",
                  f"need 0 <= data.ramp_start_epoch ({d.ramp_start_epoch}) <= data.ramp_end_epoch <= train.epochs")
    _check_input_size(cfg)
    _check_augment(cfg)
    _check_adversarial(cfg)
    if cfg.parallel.strategy == "deepspeed":
        m.require(not m.compile, "compile", "not supported with parallel.strategy=deepspeed; use ddp")
        # DeepSpeed hands the optimizer flattened partitions: LAMB's per-layer trust ratios and its gradient
        # clipping would see one flat tensor per rank instead.
        cfg.optim.require(cfg.optim.name != "lamb", "name", "lamb is not supported with parallel.strategy=deepspeed "
                                                             "(it needs whole layers); use ddp, or sgd / adamw")
        # Lookahead writes the module's weights; DeepSpeed keeps its own (partitioned) master copy.
        t.require(not t.lookahead_every_steps, "lookahead_every_steps",
                  "not supported with parallel.strategy=deepspeed (it keeps its own master weights); use ddp")


def _check_adversarial(cfg: Config) -> None:
    a, t = cfg.adversarial, cfg.train
    t.require(t.monitor != "robust_top1" or a.checks, "monitor",
              "robust_top1 is measured by adversarial training's check: set adversarial.method and "
              "adversarial.check_images > 0")
    if not a.on:
        return
    # The attack differentiates the plain module between the engine's steps; DeepSpeed's partitioned
    # parameters and gradient hooks are not built for that.
    a.require(cfg.parallel.strategy != "deepspeed", "method", "adversarial training runs with "
                                                              "parallel.strategy=ddp, not deepspeed")
    a.require(not a.checks or cfg.data.loader != "random", "check_images",
              "data.loader=random has no training images to check; set adversarial.check_images=0")


def _check_augment(cfg: Config) -> None:
    """The per-image ops and repeated augmentation (per-copy draws) run in the two image-file loaders."""
    a, d = cfg.augment, cfg.data
    for key, on in (("auto", a.auto), ("three_augment", a.three_augment), ("color_jitter", a.color_jitter),
                    ("erase_prob", a.erase_prob)):
        a.require(not on or d.loader in ("ffcv", "torchvision"), key,
                  f"per-image ops run in data.loader=ffcv or torchvision, not data.loader={d.loader}")
    a.require(a.repeats == 1 or d.loader in ("ffcv", "torchvision"), "repeats",
              f"repeated augmentation runs in data.loader=ffcv or torchvision, not data.loader={d.loader}")
    a.require(a.repeats == 1 or d.loader != "ffcv" or d.os_cache, "repeats",
              "with data.loader=ffcv needs data.os_cache=true (FFCV's process cache reads samples by their index)")


def _check_input_size(cfg: Config) -> None:
    """Images at least as large as the architecture takes. A model that takes one image size (a ViT's
    position embeddings) gets that size, and no progressive resizing: the error names the model.kwargs key
    that builds it for the data's size instead."""
    from visiontrain.models import input_size_of, spec_of

    d, m = cfg.data, cfg.model
    minimum = spec_of(m.name).min_input_size
    for name in ("image_size", "val_image_size", *(("min_res",) if d.progressive_resizing else ())):
        d.require(getattr(d, name) >= minimum, name, f"{m.name} takes images of at least {minimum} px")
    if d.loader == "random" or not spec_of(m.name).fixed_input_size or m.kwargs.get("dynamic_img_size"):
        return
    spec = spec_of(m.name)
    size = input_size_of(m.name, m.kwargs)
    key = spec.size_keyword
    d.require(not d.progressive_resizing, "progressive_resizing",
              f"{m.name} takes only {size} px images" + (" (model.kwargs.dynamic_img_size=true lifts that)"
                                                          if m.name.startswith("timm/") else ""))
    for name in ("image_size", "val_image_size"):
        wanted = getattr(d, name)
        built_for = f"[{wanted},{wanted}]" if key == "input_size" else str(wanted)
        d.require(wanted == size, name, f"{m.name} takes {size} px images: set data.{name}={size}"
                  + (f", or model.kwargs.{key}={built_for} to build it for this size" if key else ""))
