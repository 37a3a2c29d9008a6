"""Reading a config: defaults, YAML file, dotted `section.key=value` overrides, launcher settings.

`load_config(path, overrides)` merges them in that order and validates the result once.
Unknown keys, wrong types and impossible values raise `UsageError` with one line that names
the key, the value and what is allowed. Also the config's other shapes: `to_yaml`, `to_dict`, `all_keys`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from visiontrain.config.launcher_settings import apply_launcher_settings
from visiontrain.config.renames import current_name, renamed_yaml
from visiontrain.config.schema import Config, fill_model_defaults, fill_monitor, validate
from visiontrain.infra.errors import UsageError


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                environ: Mapping[str, str] | None = None) -> Config:
    """Defaults ← YAML file ← `key=value` overrides ← launcher settings (`environ`), validated once.

    `environ` is given by entry points that may run under `accelerate launch`: its
    settings are checked against the config and may select the DeepSpeed strategy.
    Raises UsageError.
    """
    merged = OmegaConf.structured(Config)
    if path is not None:
        merged = _merge(merged, renamed_yaml(_read_yaml(Path(path)), str(path)), f"in {path}")
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r} is not of the form section.key=value")
        key, _, value = item.partition("=")
        key, value = current_name(key, value, f"override {item!r}")
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
    fill_model_defaults(cfg)
    fill_monitor(cfg)
    validate(cfg)
    return cfg


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
