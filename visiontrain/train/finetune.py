"""Fine-tuning: starting weights (`finetune.init_from`) and what trains (`finetune.freeze`).

Starting weights come from any source `checkpoint.weights.read_state_dict` reads (a run directory,
a .safetensors file, a PyTorch state dict). Every tensor outside the classifier head must fit
the model exactly; a head with another class count is replaced by a fresh one (or
refused with `finetune.keep_head`).

Freezing sets `requires_grad=False`: frozen parameters get no gradient computation and
no optimizer state (DDP and DeepSpeed only see trainable ones). A BatchNorm layer whose
affine parameters are frozen also keeps its running statistics: it runs in eval mode
during training (`keep_frozen_bn_in_eval`, called by the trainer after `train()`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from visiontrain.checkpoint.weights import read_state_dict
from visiontrain.config import FREEZE_POLICIES, FinetuneConfig, parse_freeze
from visiontrain.infra.errors import UsageError
from visiontrain.models.contract import ModelSpec

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ loading
def load_initial_weights(model: nn.Module, spec: ModelSpec, cfg: FinetuneConfig,
                         key: str = "finetune.init_from") -> dict[str, Any]:
    """Load `cfg.init_from` into `model`; returns what happened (for logs and metrics)."""
    weights, origin = read_state_dict(cfg.init_from, cfg.use_ema, key)
    weights = _as_the_model_expects(model, spec, weights, f"{key}={cfg.init_from!r}")
    own = model.state_dict()
    is_head = spec.is_head
    mismatched = [k for k in own if k in weights and not is_head(k) and weights[k].shape != own[k].shape]
    missing = [k for k in own if k not in weights and not is_head(k)]
    unexpected = [k for k in weights if k not in own and not is_head(k)]
    if mismatched or missing or unexpected:
        parts = []
        if mismatched:
            parts.append("shape mismatch at " + ", ".join(
                f"{k} (weights {list(weights[k].shape)}, model {list(own[k].shape)})" for k in mismatched[:3]))
        if missing:
            parts.append("missing " + ", ".join(missing[:3]))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:3]))
        raise UsageError(f"{key}={cfg.init_from!r} does not fit the model (is model.name right?): "
                         + "; ".join(parts))
    head_keys = [k for k in own if is_head(k)]
    head_fits = all(k in weights and weights[k].shape == own[k].shape for k in head_keys) and not any(
        is_head(k) and k not in own for k in weights)
    if not head_fits:
        theirs = next((weights[k] for k in weights if is_head(k) and k.endswith(".weight")), None)
        their_classes = theirs.shape[0] if theirs is not None else "no"
        mine = next((own[k] for k in head_keys if k.endswith(".weight")), None)
        ours = mine.shape[0] if mine is not None else 0
        if cfg.keep_head:
            raise UsageError(f"{key}={cfg.init_from!r} has a {their_classes}-class head and the model "
                             f"{ours} classes: set model.num_classes={their_classes}" +
                             (" or drop finetune.keep_head=true" if key.startswith("finetune.") else ""))
        log.info("classifier head replaced: the weights have a %s-class head, the model %d classes",
                 their_classes, ours)
    to_load = OrderedDict((k, v) for k, v in weights.items() if head_fits or not is_head(k))
    # Module versions: a weights file carries none (safetensors has no place for them), and models that
    # migrate old layouts on load (torchvision's MNASNet) refuse a state dict without. The tensors fit
    # the model's own layout (checked above), so its own versions describe them.
    to_load._metadata = getattr(weights, "_metadata", None) or own._metadata  # type: ignore[attr-defined]
    model.load_state_dict(to_load, strict=False)
    return {"init_from": origin, "tensors_loaded": len(to_load), "head_replaced": not head_fits}


def _as_the_model_expects(model: nn.Module, spec: ModelSpec, weights: dict[str, Any], source: str) -> dict[str, Any]:
    """timm models: the architecture's own checkpoint filter, as timm runs it on load (original layouts
    mapped to timm's, position embeddings resampled to the model's image size). torchvision models built
    without auxiliary classifiers: their tensors dropped, as torchvision's loader does."""
    if spec.extra.get("family") == "torchvision":
        from visiontrain.models.torchvision_models import AUX_PREFIXES

        own = model.state_dict()
        dropped = [k for k in weights if k.startswith(AUX_PREFIXES) and k not in own]
        if dropped:
            log.info("%d tensors of auxiliary classifiers the model is built without left out", len(dropped))
        return {k: v for k, v in weights.items() if k not in dropped}
    if spec.extra.get("family") != "timm":
        return weights
    from visiontrain.models.timm_models import checkpoint_filter

    filter_fn = checkpoint_filter(model)
    if filter_fn is None:
        return weights
    try:
        return filter_fn(dict(weights), model)
    except Exception as err:  # the filter meets weights of another architecture
        raise UsageError(f"{source} does not fit {spec.name} (timm's checkpoint filter: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'})") from None


# ------------------------------------------------------------------ freezing
def freeze(model: nn.Module, spec: ModelSpec, policy: str) -> dict[str, int]:
    """Apply `finetune.freeze`; returns parameter counts (frozen, trainable)."""
    parsed = parse_freeze(policy)
    if parsed is None:
        raise UsageError(f"config key 'finetune.freeze' = {policy!r} is invalid: allowed {FREEZE_POLICIES}")
    kind, count = parsed
    frozen: list[nn.Parameter] = []
    if kind == "backbone":
        frozen = [p for name, p in model.named_parameters() if not spec.is_head(name)]
    elif kind == "stages":
        depths, stages = spec.depths(model, False)
        if not 1 <= count <= stages:
            raise UsageError(f"config key 'finetune.freeze' = {policy!r} is invalid: {spec.name} has "
                             f"{stages} stages; allowed stages:1..stages:{stages}")
        frozen = [p for name, p in model.named_parameters() if depths.get(name, stages + 1) <= count]
    elif kind == "bn":
        frozen = [p for m in model.modules() if isinstance(m, _BatchNorm) for p in m.parameters()]
    for param in frozen:
        param.requires_grad_(False)
    counts = {"frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad),
              "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    if kind != "none":
        log.info("finetune.freeze=%s: %d parameters frozen, %d trainable", policy, counts["frozen"],
                 counts["trainable"])
    return counts


def keep_frozen_bn_in_eval(model: nn.Module) -> None:
    """BatchNorm layers whose scale and shift are both frozen use (and keep) their running statistics.
    A layer with only its scale frozen (model.bn_scale=frozen) still trains on batch statistics."""
    for module in model.modules():
        if (isinstance(module, _BatchNorm) and module.weight is not None
                and not module.weight.requires_grad and not module.bias.requires_grad):
            module.eval()


def prepare_model(model: nn.Module, spec: ModelSpec, cfg: FinetuneConfig) -> dict[str, Any]:
    """Starting weights, then freezing; returns what was done (recorded in summary.json).

    The starting weights are read on every start, also when the run resumes (the
    checkpoint then overwrites them): the run never depends on whether a checkpoint exists.
    """
    info: dict[str, Any] = {}
    if cfg.init_from:
        info.update(load_initial_weights(model, spec, cfg))
    info.update(freeze=cfg.freeze, **freeze(model, spec, cfg.freeze))
    return info
