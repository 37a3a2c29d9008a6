"""The config sections: each key's type, default, allowed values and checks, side by side.

One dataclass per section of the YAML file. A key's comments are its documentation:
docs/configuration.md is generated from them (`python -m visiontrain.config.reference`).
The defaults are the documented default run: CIFAR-10, ResNet-18 (CIFAR stem).
Each section's `check` holds the rules that read only that section; rules that read two
sections are in `schema.validate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from visiontrain.config.checks import Section, choice
from visiontrain.models import MODELS_WITH_WIDTH, check_model_name

CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]
TTA_MODES = ("none", "flip", "flip_translate")  # evaluate/tta.py implements them


@dataclass
class RunConfig(Section):
    section = "run"
    dir: str = "runs/cifar10_resnet18"  # the run directory: config, metrics, checkpoints, weights, report
    seed: int = 0  # model init, data order and augmentation all follow from it
    # true: a run dir holding checkpoints is resumed; false: an existing run dir is refused.
    resume: bool = True
    device: str = choice("auto", ("auto", "cpu", "cuda"))  # auto | cpu | cuda
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)

    def check(self) -> None:
        self.require(bool(self.dir.strip()), "dir", "must be a directory path")


@dataclass
class DataConfig(Section):
    section = "data"
    # ffcv | torchvision | device (the whole dataset in device memory, augmented there: CIFAR-sized data)
    # | random (random tensors made on the device: no input pipeline)
    loader: str = choice("ffcv", ("ffcv", "torchvision", "device", "random"))
    path: str = "data/cifar10"  # ffcv: train.beton/val.beton/meta.json; torchvision: image folders or CIFAR batches
    recipe: str = choice("cifar", ("cifar", "imagenet"))  # cifar (pad-and-translate) | imagenet (random-resized-crop)
    image_size: int = 32  # training resolution
    val_image_size: int = 32  # evaluation resolution
    # imagenet recipe: center crop covers this fraction; 0: the model's (a timm model's published crop_pct),
    # else 0.875
    val_crop_ratio: float = 0.0
    crop_padding: int = 4  # cifar recipe: random translation of up to this many pixels
    # cifar recipe: what a translation uncovers: mean (the mean colour, FFCV's RandomTranslate) |
    # reflect (the image mirrored at its border, without repeating the edge: airbench's padding)
    translate_fill: str = choice("mean", ("mean", "reflect"))
    cutout: int = 0  # cifar recipe: side of a square filled with the mean colour; 0 = off
    flip: bool = True  # random horizontal flip (both recipes)
    # With flip: epoch 0 flips a fair coin per image, each later epoch mirrors exactly the
    # images the previous one did not (every image is seen both ways in any two epochs).
    alternate_flip: bool = False
    # Normalization per channel (R, G, B): mean in [0, 1], std in (0, 1]. Empty: the model's (the input
    # contract of a timm or torchvision model's published weights), else CIFAR-10's statistics. The run's
    # config.yaml records the values used.
    mean: List[float] = field(default_factory=list)
    std: List[float] = field(default_factory=list)
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

    def check(self) -> None:
        self.require(self.flip or not self.alternate_flip, "alternate_flip",
                     "alternates the flips of data.flip=true; set data.flip=true or leave it false")
        self.require(self.image_size >= 8, "image_size", "must be >= 8")
        self.require(self.val_image_size >= 8, "val_image_size", "must be >= 8")
        self.require(0 <= self.val_crop_ratio <= 1, "val_crop_ratio", "must be in (0, 1] (0: the model's)")
        self.require(0 <= self.crop_padding <= self.image_size // 2, "crop_padding",
                     f"must be in [0, data.image_size/2={self.image_size // 2}]")
        self.require(0 <= self.cutout <= self.image_size, "cutout",
                     f"must be in [0, data.image_size={self.image_size}]")
        if self.mean:  # empty: the model's (config.schema.fill_model_defaults fills both, or neither is empty)
            self.require(len(self.mean) == 3 and all(0 <= v <= 1 for v in self.mean), "mean",
                         "three numbers (R, G, B) in [0, 1]")
        if self.std:
            self.require(len(self.std) == 3 and all(0 < v <= 1 for v in self.std), "std",
                         "three numbers (R, G, B) in (0, 1], as fractions of the pixel range")
        if bool(self.mean) != bool(self.std):
            given, empty = ("mean", "std") if self.mean else ("std", "mean")
            self.require(False, empty, f"empty while data.{given} is set: set both, or leave both empty for the "
                                       f"model's normalization (one of each would mix two sets of statistics)")
        self.require(self.num_workers >= 0, "num_workers", "must be >= 0")
        self.require(self.batches_ahead >= 1, "batches_ahead", "must be >= 1")
        if self.progressive_resizing:  # the epoch ramp is checked against train.epochs in schema.validate
            self.require(self.loader == "ffcv" and self.recipe == "imagenet", "progressive_resizing",
                         "needs data.loader=ffcv and data.recipe=imagenet")
            self.require(8 <= self.min_res <= self.max_res, "min_res", f"must be in [8, data.max_res={self.max_res}]")
            self.require(self.res_multiple >= 1, "res_multiple", "must be >= 1")
        self.require(self.random_train_samples >= 1, "random_train_samples", "must be >= 1")
        self.require(self.random_val_samples >= 1, "random_val_samples", "must be >= 1")
        self.require(all(c >= 0 for c in self.classes) and len(set(self.classes)) == len(self.classes), "classes",
                     "distinct class indices >= 0 (empty = all classes)")
        self.require(0 < self.train_fraction <= 1, "train_fraction", "must be in (0, 1]")


@dataclass
class AugmentConfig(Section):
    """Training augmentation beyond the recipe's sizing and flip (docs/data.md lists every op and its draws)."""

    section = "augment"
    # RandAugment as timm spells it, rand-m<magnitude 0-10>[-n<ops, 2>][-mstd<magnitude std>][-mmax<10>]
    # [-inc<1: increasing strengths>][-p<probability of each op, 0.5>], e.g. rand-m9-mstd0.5-inc1; or
    # trivial (TrivialAugmentWide); empty = off. ffcv and torchvision loaders
    auto: str = ""
    three_augment: bool = False  # DeiT III: grayscale, solarize or Gaussian blur, one per image
    color_jitter: float = 0.0  # brightness, contrast and saturation factors in [1 - x, 1 + x]; 0 = off
    erase_prob: float = 0.0  # random erasing: probability per image (0 = off)
    erase_mode: str = choice("pixel", ("const", "pixel"))  # fill: const (the mean colour) | pixel (noise)
    erase_area: List[float] = field(default_factory=lambda: [0.02, 1 / 3])  # fraction of the image, [min, max]
    erase_ratio: List[float] = field(default_factory=lambda: [0.3, 1 / 0.3])  # aspect ratio h/w, [min, max]
    erase_count: int = 1  # rectangles per erased image
    # Mixup / CutMix on the training device, per micro-batch per process: each image mixed with the
    # batch's reversed order, lambda ~ Beta(alpha, alpha); 0 = off
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0  # probability that a batch (mix_mode batch) or an image (elem) is mixed
    switch_prob: float = 0.5  # with both alphas > 0: probability of CutMix instead of Mixup
    mix_mode: str = choice("batch", ("batch", "elem"))  # one lambda per batch | per image
    # Repeated augmentation (DeiT): each sample k times per epoch, each copy augmented differently;
    # epochs keep their length (they see 1/k of the distinct samples). 1 = off
    repeats: int = 1

    def check(self) -> None:
        if self.auto:
            from visiontrain.data.ops.auto_augment import parse_policy

            parse_policy(self.auto)
        self.require(0 <= self.color_jitter <= 1, "color_jitter", "must be in [0, 1] (0 = off)")
        self.require(0 <= self.erase_prob <= 1, "erase_prob", "a probability in [0, 1] (0 = off)")
        self.require(len(self.erase_area) == 2 and 0 < self.erase_area[0] <= self.erase_area[1] <= 1, "erase_area",
                     "[min, max] with 0 < min <= max <= 1")
        self.require(len(self.erase_ratio) == 2 and 0 < self.erase_ratio[0] <= self.erase_ratio[1], "erase_ratio",
                     "[min, max] with 0 < min <= max")
        self.require(self.erase_count >= 1, "erase_count", "must be >= 1")
        self.require(self.mixup_alpha >= 0, "mixup_alpha", "must be >= 0 (0 = off)")
        self.require(self.cutmix_alpha >= 0, "cutmix_alpha", "must be >= 0 (0 = off)")
        self.require(0 <= self.mix_prob <= 1, "mix_prob", "a probability in [0, 1]")
        self.require(0 <= self.switch_prob <= 1, "switch_prob", "a probability in [0, 1]")
        self.require(self.repeats >= 1, "repeats", "must be >= 1 (1 = off)")

    @property
    def mixes(self) -> bool:
        return self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @property
    def pixel_ops(self) -> bool:
        return bool(self.auto or self.three_augment or self.color_jitter or self.erase_prob)


@dataclass
class ModelConfig(Section):
    section = "model"
    # The project's own: resnet18/34/50/101/152 (torchvision's, ImageNet stem), cifar_resnet18 (3x3 stem),
    # resnet9, cifar_fast; or any timm architecture, timm/<arch> (timm/<arch>.<tag>: the input contract of
    # those published weights), or torchvision classification model, torchvision/<name> (docs/models.md)
    name: str = "cifar_resnet18"
    num_classes: int = 10  # must equal the dataset's class count (after data.classes)
    # timm/ and torchvision/ models: keyword arguments of the architecture, e.g. drop_path_rate: 0.1,
    # img_size: 32 (timm) or image_size: 32, stochastic_depth_prob: 0.1 (torchvision)
    kwargs: Dict[str, Any] = field(default_factory=dict)
    width: int = 64  # base channel count of the CIFAR models (cifar_resnet18, resnet9)
    zero_init_residual: bool = False  # zero the last BN of each residual block
    # NHWC weights and inputs: faster convolutions on tensor cores. Empty (null): the model's choice, on for
    # convolutional networks, off for transformers whose one convolution embeds the patches (ViT, Swin)
    channels_last: Optional[bool] = None  # noqa: UP045 - OmegaConf reads typing.Optional, not `bool | None`
    compile: bool = False  # torch.compile the model (the first steps include compilation)
    # torch.compile mode: default | reduce-overhead (CUDA graphs: one launch replays the whole
    # forward and backward, for short steps the host cannot keep up with) | max-autotune
    compile_mode: str = choice("default", ("default", "reduce-overhead", "max-autotune"))
    # Every BatchNorm layer's weight of each batch in its running statistics (models/layer_settings.py;
    # PyTorch's convention: new = (1 - m) * old + m * batch); timm/ and torchvision/ models keep their own
    # momentum and epsilon unless these are set to other values than PyTorch's
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5  # every BatchNorm layer's epsilon (PyTorch's default 1e-5)
    # train | frozen: the scale is not trained, only the shift (1 from initialization; a fine-tuned
    # run keeps the loaded scale). The layer still normalizes with batch statistics in training;
    # finetune.freeze=bn freezes both.
    bn_scale: str = choice("train", ("train", "frozen"))
    # default (each layer's own) | dirac: in each convolution with an odd square kernel (1x1, 3x3, ...),
    # the first min(in, out) filters start as the identity (all zero but the centre tap of their own
    # channel) and the others keep the layer's init, so a deep stack starts near a shallow one
    conv_init: str = choice("default", ("default", "dirac"))

    def check(self) -> None:
        check_model_name(self.name)
        self.require(self.num_classes >= 2, "num_classes", "must be >= 2")
        self.require(0 < self.bn_momentum <= 1, "bn_momentum", "must be in (0, 1]")
        self.require(self.bn_eps > 0, "bn_eps", "must be > 0")
        self.require(not (self.zero_init_residual and self.bn_scale == "frozen"), "bn_scale",
                     "frozen keeps every BN scale at 1; it cannot be combined with model.zero_init_residual=true")
        self.require(self.width >= 1, "width", "must be >= 1")
        self.require(self.width == 64 or self.name in MODELS_WITH_WIDTH, "width",
                     f"only the CIFAR models ({', '.join(MODELS_WITH_WIDTH)}) have a width; leave it at 64")
        self.require(self.compile or self.compile_mode == "default", "compile_mode",
                     "takes effect only with model.compile=true; set both")


@dataclass
class OptimConfig(Section):
    section = "optim"
    # sgd | adamw | lamb (timm's LAMB: layer-wise trust ratios, the global gradient norm clipped at 1;
    # "ResNet strikes back" trains with it)
    name: str = choice("sgd", ("sgd", "adamw", "lamb"))
    lr: float = 0.5  # peak learning rate for the global batch size
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    weight_decay: float = 5e-4  # L2 (sgd) or decoupled (adamw) weight decay
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw, lamb
    eps: float = 1e-8  # adamw, lamb
    # no weight decay on normalization parameters, biases and what the architecture lists (timm's
    # no_weight_decay(): position embeddings, class tokens; for torchvision models the parameters no
    # standard layer owns)
    no_decay_bn_bias: bool = True
    backbone_lr_mult: float = 1.0  # lr of every parameter outside the classifier head, relative to optim.lr
    # Layer-wise lr decay (BEiT, timm): the head keeps optim.lr, each block below it one more factor of this
    # (blocks: a timm model's group_matcher, a torchvision model's blocks, a ResNet's stages). 1 = off;
    # 0.65-0.75 is usual for fine-tuning ViTs.
    layer_decay: float = 1.0
    # One kernel per update for all parameters (torch's fused SGD/AdamW); false: one per tensor group
    # (foreach). DDP only: under parallel.strategy=deepspeed the update is foreach.
    fused: bool = True
    # Learning rate of the normalization layers' shifts (BatchNorm/GroupNorm/LayerNorm biases)
    # relative to their group's; their weight decay is divided by it, so the decay per step
    # (lr x weight_decay) stays the same. Large values suit a frozen BN scale (model.bn_scale).
    norm_bias_lr_mult: float = 1.0
    # These parameters (names or name prefixes, e.g. whiten.bias) train only for the first
    # freeze_after_epochs epochs, then stay fixed (their learning rate becomes 0).
    freeze_after_params: List[str] = field(default_factory=list)
    # epochs that optim.freeze_after_params train (0 = off; train.epochs or more: the whole run, as in
    # a shortened run of a recipe)
    freeze_after_epochs: float = 0.0

    def check(self) -> None:
        self.require(math.isfinite(self.lr) and self.lr > 0, "lr", "must be a finite number > 0")
        self.require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        self.require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        self.require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)")
        self.require(self.eps > 0, "eps", "must be > 0")
        self.require(self.backbone_lr_mult >= 0, "backbone_lr_mult", "must be >= 0 (1 = same lr)")
        self.require(0 < self.layer_decay <= 1, "layer_decay", "must be in (0, 1] (1 = off)")
        self.require(math.isfinite(self.norm_bias_lr_mult) and self.norm_bias_lr_mult > 0, "norm_bias_lr_mult",
                     "must be a finite number > 0 (1 = same lr)")
        self.require(self.freeze_after_epochs >= 0, "freeze_after_epochs", "must be >= 0")
        self.require(not self.freeze_after_params or self.freeze_after_epochs > 0, "freeze_after_epochs",
                     "must be > 0 when optim.freeze_after_params names parameters")


@dataclass
class ScheduleConfig(Section):
    section = "schedule"
    # Per-iteration learning-rate factor; every schedule starts with a linear warmup.
    # cosine | step | triangular | constant
    name: str = choice("triangular", ("cosine", "step", "triangular", "constant"))
    warmup_epochs: float = 2.0  # FFCV CIFAR-10 recipe: lr peaks at epoch 2 of 24
    warmup_start_ratio: float = 0.0  # the warmup rises linearly from lr * this to lr
    min_lr_ratio: float = 0.0  # cosine/triangular end at lr * min_lr_ratio
    milestones: List[float] = field(default_factory=list)  # step: epochs where lr *= gamma
    gamma: float = 0.1  # step: lr factor at each milestone

    def check(self) -> None:
        # warmup_epochs and the milestones are checked against train.epochs in schema.validate
        self.require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        self.require(0 <= self.warmup_start_ratio <= 1, "warmup_start_ratio", "must be in [0, 1]")
        self.require(self.gamma > 0, "gamma", "must be > 0")
        self.require(self.name != "step" or len(self.milestones) > 0, "milestones",
                     "the step schedule needs at least one milestone")


@dataclass
class TrainConfig(Section):
    section = "train"
    epochs: int = 24  # passes over the training set
    batch_size: int = 512  # global: images per optimizer step over all processes
    grad_accum_steps: int = 1  # micro-batches per optimizer step (same result, less memory)
    precision: str = choice("bf16", ("fp32", "bf16", "fp16"))  # fp32 | bf16 | fp16 (fp16 adds a GradScaler)
    grad_clip_norm: float = 0.0  # 0 = off
    label_smoothing: float = 0.1  # of the training loss (validation loss is plain cross-entropy)
    # training loss: ce (softmax cross-entropy) | bce (per-class binary cross-entropy on the (mixed,
    # smoothed) targets, mean over classes: "ResNet strikes back")
    loss: str = choice("ce", ("ce", "bce"))
    ema: bool = False  # keep an exponential moving average of the weights (evaluated and exported too)
    ema_decay: float = 0.999  # per optimizer step
    # Lookahead (train/lookahead.py): every this many optimizer steps the weights and BN statistics
    # move to a running average of themselves, and training ends on that average (0 = off).
    # The average's decay ramps up as lookahead_decay * (step / total steps) ** lookahead_power.
    lookahead_every_steps: int = 0
    lookahead_decay: float = 0.7738  # the average's decay at the last step (0.7738 = 0.95 ** 5)
    lookahead_power: float = 3.0  # how late the decay ramps up: decay x (step / total) ** power
    eval_every_epochs: int = 1  # and always after the last epoch
    # Test-time augmentation of every evaluation (and the final report): none | flip (image and
    # mirror) | flip_translate (also one-pixel shifts); visiontrain/evaluate/tta.py.
    tta: str = choice("none", TTA_MODES)
    # validation metric that decides the best checkpoint: top1 | top5 | loss | robust_top1 (the
    # adversarial section's PGD check) | auto (robust_top1 when that check runs, else top1)
    monitor: str = choice("auto", ("auto", "top1", "top5", "loss", "robust_top1"))
    # Stop after this many evaluations without improvement of `monitor` (0 = off);
    # an early-stopped run ends with its best checkpoint's weights.
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0  # smaller improvements do not count
    restore_best: bool = False  # end every run with the best checkpoint's weights (implied by early stopping)

    def check(self) -> None:
        self.require(self.epochs >= 1, "epochs", "must be >= 1")
        self.require(self.batch_size >= 1, "batch_size", "must be >= 1")
        self.require(self.grad_accum_steps >= 1, "grad_accum_steps", "must be >= 1")
        self.require(self.grad_clip_norm >= 0, "grad_clip_norm", "must be >= 0 (0 = off)")
        self.require(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        self.require(0 < self.ema_decay < 1, "ema_decay", "must be in (0, 1)")
        self.require(self.lookahead_every_steps >= 0, "lookahead_every_steps", "must be >= 0 (0 = off)")
        self.require(0 <= self.lookahead_decay < 1, "lookahead_decay", "must be in [0, 1)")
        self.require(self.lookahead_power >= 0, "lookahead_power", "must be >= 0")
        self.require(self.eval_every_epochs >= 1, "eval_every_epochs", "must be >= 1")
        self.require(self.early_stop_patience >= 0, "early_stop_patience", "must be >= 0 (0 = off)")
        self.require(self.early_stop_min_delta >= 0, "early_stop_min_delta", "must be >= 0")


@dataclass
class AdversarialConfig(Section):
    """Adversarial training (visiontrain/robust/): each training batch replaced by its L-infinity attack."""

    section = "adversarial"
    # none | fgsm_rs (one signed-gradient step from a random start: "Fast is better than free") |
    # n_fgsm (one step from wider noise, not projected: "Make Some Noise", de Jorge et al.) |
    # pgd (steps of projected gradient ascent: Madry et al.)
    method: str = choice("none", ("none", "fgsm_rs", "n_fgsm", "pgd"))
    # Radius of the L-infinity ball, in [0, 1] pixels (a number or a fraction: 8/255); the attack moves
    # pixels, the model reads them normalized with data.mean / data.std
    epsilon: str = "8/255"
    # Step size in pixels; empty: 1.25 x epsilon for fgsm_rs, epsilon for n_fgsm, 2.5 x epsilon / steps for pgd
    alpha: str = ""
    noise: str = ""  # n_fgsm: half-width of its uniform noise, in pixels; empty: 2 x epsilon
    steps: int = 7  # pgd: gradient steps per batch
    random_start: bool = True  # pgd only: start from a uniform draw in the ball (fgsm_rs and n_fgsm always do)
    # Every evaluation, PGD accuracy on about this many training images (a seeded draw from the training
    # split, evaluation preprocessing, BN in eval mode): logged as val robust_top1, train.monitor=robust_top1
    # keeps the best-robust checkpoint. 0 = off
    check_images: int = 1000
    check_steps: int = 10  # PGD steps of that check (alpha 2.5 x epsilon / steps, random start)
    # Catastrophic overfitting: robust_top1 more than this many points below its best so far is a
    # collapse, logged in one line
    collapse_drop: float = 20.0
    stop_on_collapse: bool = True  # a collapse ends the run with the best checkpoint's weights (train.monitor)

    def check(self) -> None:
        from visiontrain.robust.attacks import parse_pixels

        for name in ("epsilon", "alpha", "noise"):
            if name != "epsilon" and not getattr(self, name):
                continue
            try:
                value = parse_pixels(getattr(self, name), f"adversarial.{name}")
            except ValueError:
                value = float("nan")
            self.require(0 < value <= 1, name, "in (0, 1] pixels: a number or a "
                                               "fraction such as 8/255")
        self.require(self.steps >= 1, "steps", "must be >= 1")
        self.require(not self.noise or self.method == "n_fgsm", "noise", "applies to method=n_fgsm only")
        self.require(self.check_images >= 0, "check_images", "must be >= 0 (0 = off)")
        self.require(self.check_steps >= 1, "check_steps", "must be >= 1")
        self.require(0 < self.collapse_drop <= 100, "collapse_drop", "points of top-1, in (0, 100]")

    @property
    def on(self) -> bool:
        return self.method != "none"

    @property
    def eps(self) -> float:
        from visiontrain.robust.attacks import parse_pixels

        return parse_pixels(self.epsilon, "adversarial.epsilon")

    @property
    def step_size(self) -> float:
        from visiontrain.robust.attacks import parse_pixels

        if self.alpha:
            return parse_pixels(self.alpha, "adversarial.alpha")
        return {"fgsm_rs": 1.25 * self.eps, "n_fgsm": self.eps}.get(self.method, 2.5 * self.eps / self.steps)

    @property
    def noise_width(self) -> float:
        from visiontrain.robust.attacks import parse_pixels

        return parse_pixels(self.noise, "adversarial.noise") if self.noise else 2 * self.eps

    @property
    def attack_steps(self) -> int:
        return 1 if self.method in ("fgsm_rs", "n_fgsm") else self.steps

    @property
    def checks(self) -> bool:
        return self.on and self.check_images > 0


FREEZE_POLICIES = "none, backbone, stages:K (K >= 1: the stem and the first K stages), bn"


def parse_freeze(policy: str) -> tuple[str, int] | None:
    """'stages:2' -> ('stages', 2); 'none'/'backbone'/'bn' -> (policy, 0); anything else -> None."""
    if policy in ("none", "backbone", "bn"):
        return policy, 0
    name, _, count = policy.partition(":")
    if name == "stages" and count.isdigit() and int(count) >= 1:
        return name, int(count)
    return None


@dataclass
class FinetuneConfig(Section):
    section = "finetune"
    # Starting weights: a run directory (its weights.safetensors, else its newest checkpoint), a
    # .safetensors file, a PyTorch state dict (.pth/.pt/.bin, read without unpickling objects), a
    # Hugging Face snapshot folder (its model.safetensors), or hf-hub:<org>/<name> found in the
    # local Hugging Face cache (HF_HUB_CACHE, HF_HOME; never downloaded). Empty = random init.
    init_from: str = ""
    use_ema: bool = False  # a run directory's EMA weights
    keep_head: bool = False  # refuse a classifier head of another class count instead of replacing it
    # none | backbone (linear probe) | stages:K (stem + first K stages; a timm model's stages are its
    # group_matcher's, a torchvision model's its blocks: docs/models.md) | bn
    freeze: str = "none"

    def check(self) -> None:
        self.require(parse_freeze(self.freeze) is not None, "freeze", f"allowed {FREEZE_POLICIES}")
        self.require(bool(self.init_from) or not self.use_ema, "use_ema",
                     "only read with finetune.init_from (a run directory)")
        self.require(bool(self.init_from) or not self.keep_head, "keep_head", "only read with finetune.init_from")


@dataclass
class CheckpointConfig(Section):
    section = "checkpoint"
    every_epochs: int = 1  # 0 = only at the end
    every_steps: int = 0  # 0 = off
    keep_last: int = 2  # periodic checkpoints kept; the best one (by train.monitor) is kept in addition
    # On SIGUSR1/SIGTERM: checkpoint at the next step boundary and exit with code 3. With
    # several processes, ranks agree on a stop request every this many steps (one all-reduce).
    signal_check_steps: int = 10

    def check(self) -> None:
        self.require(self.every_epochs >= 0, "every_epochs", "must be >= 0 (0 = only at the end)")
        self.require(self.every_steps >= 0, "every_steps", "must be >= 0 (0 = off)")
        self.require(self.keep_last >= 1, "keep_last", "must be >= 1")
        self.require(self.signal_check_steps >= 1, "signal_check_steps", "must be >= 1")


@dataclass
class ParallelConfig(Section):
    section = "parallel"
    # ddp (DistributedDataParallel) | deepspeed (ZeRO stage from the JSON)
    strategy: str = choice("ddp", ("ddp", "deepspeed"))
    deepspeed_config: str = ""  # deepspeed: JSON file, e.g. configs/deepspeed/zero2.json
    find_unused_parameters: bool = False  # ddp
    # Seconds a collective waits for the other processes before the run fails: how long a process that hangs,
    # or a node that vanished without closing its connections, holds the others. null: torch's default for
    # the backend (gloo 1800, NCCL 600). It must exceed the longest step one rank takes alone (rank 0's
    # checkpoint write, a first torch.compile).
    timeout: Optional[int] = None  # noqa: UP045 - OmegaConf reads typing.Optional

    def check(self) -> None:
        self.require(self.timeout is None or 10 <= self.timeout <= 7 * 24 * 3600, "timeout",
                     "must be between 10 and 604800 seconds (a week), or null for torch's default")
        if self.strategy == "deepspeed":
            self.require(bool(self.deepspeed_config), "deepspeed_config",
                         "parallel.strategy=deepspeed needs a DeepSpeed JSON, e.g. configs/deepspeed/zero2.json")
        else:
            self.require(not self.deepspeed_config, "deepspeed_config",
                         "only read with parallel.strategy=deepspeed; set that too, or leave it empty")


@dataclass
class LogConfig(Section):
    section = "log"
    every_steps: int = 50  # read losses from the device (a host sync) this often
    progress_bar: bool = True  # rank 0, on stderr
    tensorboard: bool = True  # RUN_DIR/tb/
    plots: bool = True  # RUN_DIR/curves.png at the end
    report: bool = True  # evaluation report of the final weights in RUN_DIR/eval/
    # Each rank writes the sample indices it drew per epoch to ranks/ (data-order audits).
    sample_ids: bool = False

    def check(self) -> None:
        self.require(self.every_steps >= 1, "every_steps", "must be >= 1")
