"""A sweep's specification: the YAML a user writes, read and checked before anything starts.

    config: configs/cifar10/fast.yaml          # the base config every trial starts from
    overrides: [train.epochs=9]                # fixed for every trial
    metric: top1                               # what the trainer logs after each evaluation: top1, top5, loss
    direction: maximize                        # (default: minimize for loss, maximize otherwise)
    trials: 30                                 # the budget: trials started, whatever their end
    sampler: {name: tpe, seed: 0}              # tpe | random | grid
    pruner: {name: successive_halving, min_resource: 1, reduction_factor: 3}   # none | median | hyperband | threshold
    space:
      optim.lr: {type: float, low: 0.1, high: 3.0, log: true}
      train.label_smoothing: {type: categorical, choices: [0.0, 0.1, 0.2]}
      model.width: {type: int, low: 32, high: 96, step: 16}
      optim.name: {type: categorical, choices: [sgd, adamw]}
      optim.momentum: {type: float, low: 0.8, high: 0.95, when: {optim.name: sgd}}   # conditional

Every mistake is one UsageError line naming the key and what is allowed: unknown keys (in the spec or in
the space, checked against the config), empty ranges, a metric the trainer does not log, values the
config refuses (each range's ends are loaded into the config once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visiontrain.config import load_config
from visiontrain.infra.errors import UsageError

TOP_KEYS = ("config", "overrides", "metric", "direction", "trials", "sampler", "pruner", "space", "lease_seconds")
SAMPLERS = {"tpe": ("seed", "n_startup_trials"), "random": ("seed",), "grid": ("seed",)}
PRUNERS = {
    "none": (),
    "median": ("n_startup_trials", "n_warmup_steps"),
    "successive_halving": ("min_resource", "reduction_factor", "min_early_stopping_rate"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
    "threshold": ("lower", "upper", "n_warmup_steps"),  # e.g. with metric loss, upper: 5 stops diverging runs
}
FLOAT_OPTIONS = ("lower", "upper")
AUTO_OPTIONS = ("min_resource", "max_resource")  # Optuna estimates them from the first trials
PARAM_KEYS = {"float": ("low", "high", "log", "step", "when"), "int": ("low", "high", "log", "step", "when"),
              "categorical": ("choices", "when")}
# The val event's numbers after every evaluation (train/trainer.py): what a trial can report and be pruned on.
METRICS = {"top1": "maximize", "top5": "maximize", "loss": "minimize", "robust_top1": "maximize"}
# Keys a trial must not choose: where it writes is the study's decision.
RESERVED = ("run.dir", "run.resume")  # a trial resumes its own directory


@dataclass(frozen=True)
class Param:
    key: str  # a config key, e.g. optim.lr
    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: tuple[tuple[str, Any], ...] = ()  # sampled only where these keys took these values

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def can_take(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def ends(self) -> list[Any]:
        """The values the config must accept: both ends of a range, every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]

    def grid(self) -> list[Any] | None:
        """Every value, where the parameter has finitely many (categorical, or a range with a step)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.step is None and self.kind == "float":
            return None
        step = self.step or 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]


@dataclass(frozen=True)
class SweepSpec:
    config: str | None
    overrides: tuple[str, ...]
    metric: str
    direction: str
    trials: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    space: tuple[Param, ...]
    lease_seconds: float = 600.0
    source: dict[str, Any] = field(default_factory=dict, compare=False)  # the YAML as read

    def identity(self) -> dict[str, Any]:
        """What a study directory is bound to: a spec with another identity belongs in another directory.
        The budget and the lease may change between runs of the same study."""
        return {key: self.source.get(key) for key in ("config", "overrides", "metric", "direction", "sampler",
                                                     "pruner", "space")}

    def trial_overrides(self, params: dict[str, Any], run_dir: Path | str) -> list[str]:
        return [*self.overrides, *(f"{key}={_override_value(value)}" for key, value in params.items()),
                f"run.dir={run_dir}"]


def _override_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def read_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"sweep spec {path} does not exist or is not a file")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UsageError(f"sweep spec {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    return parse_spec(loaded, str(path))


def parse_spec(loaded: Any, where: str = "sweep spec") -> SweepSpec:
    if not isinstance(loaded, dict):
        raise UsageError(f"{where} must be a mapping with keys {', '.join(TOP_KEYS)}")
    unknown = sorted(set(loaded) - set(TOP_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(TOP_KEYS)}")
    config = loaded.get("config")
    if config is not None and not Path(config).is_file():
        raise UsageError(f"{where}: config {config!r} does not exist (paths are relative to where you run the sweep)")
    overrides = loaded.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
        raise UsageError(f"{where}: overrides must be a list of 'section.key=value' strings")
    for item in overrides:
        if item.partition("=")[0].strip() in RESERVED:
            raise UsageError(f"{where}: override {item!r}: {', '.join(RESERVED)} are set by the sweep (each trial "
                             "resumes a run directory of its own)")
    metric = loaded.get("metric", "top1")
    if not isinstance(metric, str) or metric not in METRICS:
        raise UsageError(f"{where}: metric {metric!r} is not logged after each evaluation; use one of "
                         f"{', '.join(METRICS)}")
    direction = loaded.get("direction", METRICS[metric])
    if direction not in ("maximize", "minimize"):
        raise UsageError(f"{where}: direction {direction!r}: use maximize or minimize")
    trials = loaded.get("trials", 20)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise UsageError(f"{where}: trials {trials!r} must be a whole number >= 1")
    lease = loaded.get("lease_seconds", 600)
    if not isinstance(lease, (int, float)) or isinstance(lease, bool) or not math.isfinite(lease) or lease < 30:
        raise UsageError(f"{where}: lease_seconds {lease!r} must be a number >= 30 (a worker renews its lease every "
                         "fifth of it; a shared file system may show a renewal late)")
    sampler = _named(loaded.get("sampler", {"name": "tpe"}), SAMPLERS, "sampler", where)
    pruner = _named(loaded.get("pruner", {"name": "none"}), PRUNERS, "pruner", where)
    space = _parse_space(loaded.get("space"), where)
    spec = SweepSpec(config, tuple(overrides), metric, direction, trials, sampler, pruner, space, float(lease),
                     source={**loaded, "overrides": list(overrides), "metric": metric, "direction": direction,
                             "sampler": sampler, "pruner": pruner})
    _check_against_config(spec, where)
    if sampler["name"] == "grid":
        missing = [p.key for p in space if p.grid() is None]
        if missing:
            raise UsageError(f"{where}: sampler grid needs finitely many values, but {missing[0]} is a float range "
                             "without step: give choices or a step")
        if any(p.when for p in space):
            raise UsageError(f"{where}: sampler grid does not take conditional parameters (when:); use tpe or random")
    return spec


def _named(value: Any, allowed: dict[str, tuple[str, ...]], what: str, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or value["name"] not in allowed:
        name = value.get("name") if isinstance(value, dict) else value
        raise UsageError(f"{where}: {what} {name!r}: use one of {', '.join(allowed)}")
    unknown = sorted(set(value) - {"name", *allowed[value["name"]]})
    if unknown:
        options = ", ".join(allowed[value["name"]]) or "none"
        raise UsageError(f"{where}: {what} {value['name']} has no option {unknown[0]!r}; its options: {options}")
    for key, option in value.items():
        if key == "name" or (key in AUTO_OPTIONS and option == "auto"):
            continue
        kind = (int, float) if key in FLOAT_OPTIONS else int
        if not isinstance(option, kind) or isinstance(option, bool) or (key not in FLOAT_OPTIONS and option < 0):
            allowed = "a number" if key in FLOAT_OPTIONS else "a whole number >= 0" + (
                " or auto" if key in AUTO_OPTIONS else "")
            raise UsageError(f"{where}: {what}.{key} = {option!r} must be {allowed}")
    _check_pruner_values(value, what, where)
    return dict(value)


def _check_pruner_values(value: dict[str, Any], what: str, where: str) -> None:
    """What Optuna's pruners refuse, or divide by, only once a trial reports."""
    if what != "pruner":
        return
    name = value["name"]
    if value.get("reduction_factor", 2) < 2:
        raise UsageError(f"{where}: pruner.reduction_factor = {value['reduction_factor']} must be >= 2")
    for key in AUTO_OPTIONS:
        if value.get(key, "auto") != "auto" and value[key] < 1:
            raise UsageError(f"{where}: pruner.{key} = {value[key]} must be >= 1 (epochs) or auto")
    if name == "threshold":
        lower, upper = value.get("lower"), value.get("upper")
        if lower is None and upper is None:
            raise UsageError(f"{where}: pruner threshold needs lower, upper or both")
        if lower is not None and upper is not None and not lower < upper:
            raise UsageError(f"{where}: pruner threshold: lower {lower} must be below upper {upper}")


def _parse_space(space: Any, where: str) -> tuple[Param, ...]:
    if not isinstance(space, dict) or not space:
        raise UsageError(f"{where}: space must map config keys to ranges, e.g. "
                         "optim.lr: {type: float, low: 0.01, high: 1.0, log: true}")
    params: list[Param] = []
    for key, body in space.items():
        if key in RESERVED:
            raise UsageError(f"{where}: space key {key!r} is set by the sweep (each trial has its own run directory)")
        if not isinstance(body, dict) or not isinstance(body.get("type"), str) or body["type"] not in PARAM_KEYS:
            raise UsageError(f"{where}: space.{key} needs type: float, int or categorical")
        kind = body["type"]
        unknown = sorted(set(body) - {"type", *PARAM_KEYS[kind]})
        if unknown:
            raise UsageError(f"{where}: space.{key} ({kind}) has no option {unknown[0]!r}; its options: "
                             f"{', '.join(PARAM_KEYS[kind])}")
        when = body.get("when") or {}
        if not isinstance(when, dict):
            raise UsageError(f"{where}: space.{key}.when must map config keys to values, e.g. {{optim.name: sgd}}")
        for other, wanted in when.items():
            parent = next((p for p in params if p.key == other), None)
            if parent is None:
                raise UsageError(f"{where}: space.{key}.when names {other!r}, which is not a parameter listed "
                                 "before it")
            if not parent.can_take(wanted):
                raise UsageError(f"{where}: space.{key}.when: {other} = {wanted!r} is not one of its values, so "
                                 f"{key} would never be drawn")
        params.append(_param(key, kind, body, tuple(when.items()), where))
    return tuple(params)


def _param(key: str, kind: str, body: dict[str, Any], when: tuple, where: str) -> Param:
    if kind == "categorical":
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"{where}: space.{key}: choices must be a non-empty list")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise UsageError(f"{where}: space.{key}: choices must be numbers, strings, booleans or null")
        return Param(key, kind, choices=tuple(choices), when=when)
    low, high, log, step = body.get("low"), body.get("high"), bool(body.get("log", False)), body.get("step")
    number = int if kind == "int" else (int, float)
    for name, value in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        if not isinstance(value, number) or isinstance(value, bool):
            what = "a whole number" if kind == "int" else "a number"
            raise UsageError(f"{where}: space.{key}.{name} = {value!r} must be {what}")
    if not low < high:
        raise UsageError(f"{where}: space.{key}: empty range low={low} high={high} (low must be below high)")
    if log and low <= 0:
        raise UsageError(f"{where}: space.{key}: log: true needs low > 0, not {low}")
    if step is not None and (step <= 0 or log):
        raise UsageError(f"{where}: space.{key}: step {step} must be > 0 and cannot go with log: true")
    return Param(key, kind, float(low), float(high), log, float(step) if step is not None else None, when=when)


def _check_against_config(spec: SweepSpec, where: str) -> None:
    """Load the base config with the fixed overrides, then with each end of each range: unknown keys, wrong
    types and refused values fail here, in one line, before any trial starts."""
    try:
        load_config(spec.config, list(spec.overrides))
    except UsageError as err:
        raise UsageError(f"{where}: {err}") from None
    for param in spec.space:
        for value in param.ends():
            try:
                load_config(spec.config, [*spec.overrides, f"{param.key}={_override_value(value)}"])
            except UsageError as err:
                raise UsageError(f"{where}: space.{param.key} = {value!r}: {err}") from None
    base = load_config(spec.config, list(spec.overrides))
    if spec.pruner["name"] != "none" and base.train.eval_every_epochs >= base.train.epochs:
        raise UsageError(f"{where}: pruner {spec.pruner['name']} never sees a value before a trial ends: the config "
                         f"evaluates every {base.train.eval_every_epochs} epochs of {base.train.epochs}; add "
                         "train.eval_every_epochs=1 to overrides")
    if spec.metric == "robust_top1" and not base.adversarial.checks:
        raise UsageError(f"{where}: metric robust_top1 is logged only with the robustness check on "
                         "(adversarial.method and adversarial.check_images > 0)")
