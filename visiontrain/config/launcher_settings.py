"""`accelerate launch`'s settings (its environment variables) checked against the run config.

`load_config(..., environ=os.environ)` calls `apply_launcher_settings` before validating:
the launcher may select the DeepSpeed strategy, and any flag it would ignore or that
contradicts the config is refused.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Mapping

from visiontrain.infra.errors import UsageError

if TYPE_CHECKING:
    from visiontrain.config.schema import Config


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
    # accelerate's own accumulation would divide every loss once more (its `backward`): one setting only.
    _refuse_contradiction(environ, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "train.grad_accum_steps",
                          cfg.train.grad_accum_steps)
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
    _refuse_contradiction(environ, "ACCELERATE_GRADIENT_CLIPPING", "train.grad_clip_norm", cfg.train.grad_clip_norm)
    p.strategy, p.deepspeed_config = "deepspeed", json_file


def _refuse_contradiction(environ: Mapping[str, str], variable: str, key: str, value: float) -> None:
    if variable in environ and float(environ[variable]) != float(value):
        raise UsageError(f"accelerate's {variable.lower()} = {environ[variable]} contradicts {key}={value}; "
                         f"set {key} only")
