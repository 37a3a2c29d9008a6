"""The DeepSpeed JSON: loaded, checked and completed from our config.

Our config owns everything a training run means the same way under DDP and DeepSpeed:
batch sizes, gradient accumulation, gradient clipping, precision, optimizer and learning
rate schedule. The JSON describes only how DeepSpeed distributes the work (the ZeRO stage
and its buffers, communication options). A JSON value for a key we own must equal ours
(or be absent); "auto" is refused (it needs a transformer config); a top-level key that
DeepSpeed would silently ignore is refused with the closest known key.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from visiontrain.config import Config
from visiontrain.infra.errors import UsageError
from visiontrain.parallel.batch_plan import BatchPlan

# JSON key -> the config key that owns it
OWNED_KEYS = {
    "train_batch_size": "train.batch_size",
    "train_micro_batch_size_per_gpu": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum_steps",
    "gradient_clipping": "train.grad_clip_norm",
    "optimizer": "optim.*",
    "scheduler": "schedule.*",
    "bf16": "train.precision",
    "fp16": "train.precision",
    "torch_autocast": "train.precision",
    "amp": "train.precision",
}


class _ReadTracker(dict):
    """A dict that remembers which keys were looked up: DeepSpeed reads every key it knows."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def _find_auto(value: Any, path: str) -> str | None:
    if value == "auto":
        return path
    if isinstance(value, dict):
        for key, inner in value.items():
            found = _find_auto(inner, f"{path}.{key}" if path else key)
            if found:
                return found
    return None


def _enabled(section: Any) -> bool:
    return bool(section.get("enabled", False)) if isinstance(section, dict) else bool(section)


def read_json(path: str) -> dict[str, Any]:
    if not path:
        raise UsageError("parallel.strategy=deepspeed needs parallel.deepspeed_config "
                         "(e.g. configs/deepspeed/zero2.json)")
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"parallel.deepspeed_config={path} does not exist")
    try:
        loaded = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"parallel.deepspeed_config={path} is not valid JSON: {err}") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"parallel.deepspeed_config={path} must hold a JSON object")
    return loaded


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def build(cfg: Config, plan: BatchPlan) -> dict[str, Any]:
    """The complete DeepSpeed config for this run, or a UsageError naming the offending key."""
    path = cfg.parallel.deepspeed_config
    user = read_json(path)
    auto = _find_auto(user, "")
    if auto:
        raise UsageError(f"parallel.deepspeed_config={path}: '{auto}' is \"auto\"; give an explicit value "
                         "(\"auto\" needs a transformer model config)")
    t = cfg.train
    ours: dict[str, Any] = {
        "train_batch_size": plan.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.accum_steps,
        "gradient_clipping": t.grad_clip_norm,
    }
    if t.precision == "fp16":
        ours["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    for key, owner in OWNED_KEYS.items():
        if key not in user:
            continue
        if key in ("optimizer", "scheduler"):
            raise UsageError(f"parallel.deepspeed_config={path}: remove '{key}'; the {key} comes from {owner} "
                             "in the run config (one setting, not two)")
        if key in ("bf16", "torch_autocast", "amp"):
            if _enabled(user[key]):
                raise UsageError(f"parallel.deepspeed_config={path}: remove '{key}': precision is set by "
                                 "train.precision only (bf16 runs torch.autocast over DeepSpeed's fp32 weights)")
            continue
        if key == "fp16":
            if _enabled(user[key]) != (t.precision == "fp16"):
                raise UsageError(f"parallel.deepspeed_config={path}: 'fp16' contradicts train.precision="
                                 f"{t.precision}; precision is set by train.precision only")
            if t.precision == "fp16":
                ours["fp16"] = {**ours["fp16"], **user[key]}  # loss-scaling details may come from the JSON
            continue
        if user[key] != ours[key]:
            raise UsageError(f"parallel.deepspeed_config={path}: '{key}' = {user[key]!r} contradicts {owner} "
                             f"(which gives {ours[key]!r}); set {owner} and leave the key out of the JSON")
    merged = {**user, **ours, "zero_allow_untested_optimizer": True, "steps_per_print": user.get("steps_per_print",
                                                                                                 10**9)}
    merged.setdefault("wall_clock_breakdown", False)
    _validate_with_deepspeed(merged, path)
    stage = zero_stage(merged)
    if stage not in (0, 1, 2, 3):
        raise UsageError(f"parallel.deepspeed_config={path}: zero_optimization.stage = {stage}; allowed 0, 1, 2, 3")
    if stage == 3 and t.ema:
        raise UsageError("train.ema=true is not supported with ZeRO stage 3 (parameters are partitioned across "
                         "ranks); use ZeRO 0-2 or train.ema=false")
    return merged


def _validate_with_deepspeed(merged: dict[str, Any], path: str) -> None:
    """DeepSpeed's own parser, which needs the process group; unknown top-level keys it would skip are refused."""
    from deepspeed.runtime.config import DeepSpeedConfig

    tracked = _ReadTracker(merged)
    try:
        DeepSpeedConfig(tracked)
    except Exception as err:  # pydantic ValidationError, AssertionError, ValueError: all are bad input
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = "; ".join(lines[:3]) if lines else type(err).__name__
        raise UsageError(f"parallel.deepspeed_config={path} is rejected by DeepSpeed: {detail}") from None
    unknown = sorted(set(merged) - tracked.read)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(tracked.read), n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"parallel.deepspeed_config={path}: unknown key '{unknown[0]}' (DeepSpeed would ignore "
                         f"it){hint}")
