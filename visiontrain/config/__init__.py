"""Typed configuration: dataclass sections, YAML files, dotted CLI overrides, validation.

`load_config(path, overrides)` merges, in order: the defaults, the YAML file, then
`section.key=value` overrides, and validates the result. The parts:

- `sections`: one dataclass per section; each key's default, allowed values and checks;
- `schema`: the root `Config`, `CHOICES` and `validate` (each section's checks, then those across sections);
- `loading`: `load_config`, `to_yaml`, `to_dict`, `all_keys`;
- `renames`: the old spellings accepted for one release;
- `reference`: generates docs/configuration.md from the sections' comments.

The names below are the package's interface: import them from `visiontrain.config`.
"""

from visiontrain.config.loading import all_keys, load_config, to_dict, to_yaml
from visiontrain.config.schema import CHOICES, Config, validate
from visiontrain.config.sections import (
    FREEZE_POLICIES,
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
    parse_freeze,
)

__all__ = [
    "CHOICES", "FREEZE_POLICIES", "AdversarialConfig", "AugmentConfig",
    "CheckpointConfig", "Config", "DataConfig", "FinetuneConfig", "LogConfig",
    "ModelConfig", "OptimConfig", "ParallelConfig", "RunConfig", "ScheduleConfig", "TrainConfig", "all_keys",
    "load_config", "parse_freeze", "to_dict", "to_yaml", "validate",
]
