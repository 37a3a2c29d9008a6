"""Config keys and values renamed in 0.2: the old spelling still works for one release, with a warning.

This module is the whole of that shim and is deleted in the next release, together with its
uses: the two calls in `loading.py` (`renamed_yaml`, `current_name`). `reference.py` then
drops the "Renamed keys" table of docs/configuration.md by itself (regenerate it).
"""

from __future__ import annotations

import warnings
from typing import Any

from omegaconf import DictConfig, OmegaConf

from visiontrain.infra.errors import UsageError

RENAMED_KEYS = {
    "data.backend": "data.loader",
    "data.synthetic_train_samples": "data.random_train_samples",
    "data.synthetic_val_samples": "data.random_val_samples",
    "backend.name": "parallel.strategy",
    "backend.deepspeed_config": "parallel.deepspeed_config",
    "backend.find_unused_parameters": "parallel.find_unused_parameters",
}
RENAMED_VALUES = {("data.loader", "synthetic"): "random"}


def current_name(key: str, value: Any, where: str) -> tuple[str, Any]:
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


def renamed_yaml(loaded: DictConfig, where: str) -> DictConfig:
    """The YAML's sections with renamed keys moved to their current names (interpolations kept)."""
    renamed: dict[str, Any] = {}
    for section, values in OmegaConf.to_container(loaded, resolve=False).items():
        if not isinstance(values, dict):
            renamed[section] = values  # left for the merge to report
            continue
        for key, value in values.items():
            new_key, value = current_name(f"{section}.{key}", value, f"in {where}")
            new_section, _, new_name = new_key.partition(".")
            if new_name in renamed.get(new_section, {}):
                raise UsageError(f"{where} sets '{new_key}' twice, once under its old name; keep '{new_key}'")
            renamed.setdefault(new_section, {})[new_name] = value
    return OmegaConf.create(renamed)
