"""The sweep spec: what it accepts, and the one-line refusals of everything else (before anything starts)."""

import copy
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, visiontrain_cli
from visiontrain.infra.errors import UsageError
from visiontrain.sweep.spec import parse_spec
from visiontrain.sweep.study import StudyDir

BASE = {"config": "configs/demo/train.yaml", "overrides": ["train.epochs=3"], "trials": 6,
        "sampler": {"name": "tpe", "seed": 1},
        "pruner": {"name": "successive_halving", "min_resource": 1, "reduction_factor": 3},
        "space": {"optim.lr": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
                  "model.width": {"type": "int", "low": 8, "high": 32, "step": 8},
                  "optim.name": {"type": "categorical", "choices": ["sgd", "adamw"]},
                  "optim.momentum": {"type": "float", "low": 0.8, "high": 0.95, "when": {"optim.name": "sgd"}}}}


@pytest.fixture(autouse=True)
def _in_checkout(monkeypatch):
    monkeypatch.chdir(ROOT)  # the spec's config path is relative to where the sweep runs


def spec_with(**changes):
    loaded = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            loaded.pop(key, None)
        else:
            loaded[key] = value
    return parse_spec(loaded)


def test_a_spec_reads_its_space_metric_and_budget():
    spec = spec_with()
    assert [p.key for p in spec.space] == ["optim.lr", "model.width", "optim.name", "optim.momentum"]
    assert (spec.metric, spec.direction, spec.trials) == ("top1", "maximize", 6)
    assert spec.space[1].grid() == [8, 16, 24, 32]
    assert spec.space[3].when == (("optim.name", "sgd"),)
    assert spec_with(metric="loss").direction == "minimize"
    assert spec.trial_overrides({"optim.lr": 0.1, "optim.nesterov": True}, "runs/t/0001") == [
        "train.epochs=3", "optim.lr=0.1", "optim.nesterov=true", "run.dir=runs/t/0001"]


@pytest.mark.parametrize("changes, words", [
    ({"budget": 3}, "unknown key 'budget'"),
    ({"metric": "accuracy"}, "metric 'accuracy' is not logged"),
    ({"metric": "robust_top1"}, "robust_top1 is logged only with the robustness check"),
    ({"direction": "up"}, "direction 'up'"),
    ({"trials": 0}, "trials 0 must be a whole number >= 1"),
    ({"sampler": {"name": "cmaes"}}, "sampler 'cmaes': use one of tpe, random, grid"),
    ({"pruner": {"name": "median", "min_resource": 1}}, "pruner median has no option 'min_resource'"),
    ({"pruner": {"name": "hyperband", "reduction_factor": 2.5}},
     "pruner.reduction_factor = 2.5 must be a whole number"),
    ({"space": {"optim.lrr": {"type": "float", "low": 0.1, "high": 1.0}}}, "unknown config key 'optim.lrr'"),
    ({"space": {"optim.lr": {"type": "float", "low": 1.0, "high": 1.0}}}, "empty range low=1.0 high=1.0"),
    ({"space": {"optim.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}}, "log: true needs low > 0"),
    ({"space": {"optim.lr": {"type": "uniform", "low": 0.1, "high": 1.0}}}, "needs type: float, int or categorical"),
    ({"space": {"optim.lr": {"type": "float", "low": 0.1, "hi": 1.0}}}, "has no option 'hi'"),
    ({"space": {"model.width": {"type": "int", "low": 8.5, "high": 16}}}, "low = 8.5 must be a whole number"),
    ({"space": {"train.epochs": {"type": "int", "low": 0, "high": 4}}}, "space.train.epochs = 0"),
    ({"space": {"optim.name": {"type": "categorical", "choices": []}}}, "choices must be a non-empty list"),
    ({"space": {"optim.name": {"type": "categorical", "choices": ["sgd", "sgdd"]}}}, "space.optim.name = 'sgdd'"),
    ({"space": {"run.dir": {"type": "categorical", "choices": ["a"]}}}, "is set by the sweep"),
    ({"space": {"optim.momentum": {"type": "float", "low": 0.8, "high": 0.9, "when": {"optim.name": "sgd"}}}},
     "names 'optim.name', which is not a parameter listed before it"),
    ({"overrides": ["optim.lrr=1"]}, "unknown config key 'optim.lrr'"),
    ({"config": "configs/nope.yaml"}, "config 'configs/nope.yaml' does not exist"),
    ({"sampler": {"name": "grid"}}, "optim.lr is a float range without step"),
    ({"metric": ["top1"]}, "metric ['top1'] is not logged"),
    ({"overrides": ["train.epochs=3", "train.eval_every_epochs=3"]}, "never sees a value before a trial ends"),
    ({"sampler": {"name": ["tpe"]}}, "sampler ['tpe']: use one of"),
    ({"lease_seconds": float("nan")}, "lease_seconds nan must be a number >= 30"),
    ({"lease_seconds": 5}, "lease_seconds 5 must be a number >= 30"),
    ({"pruner": {"name": "successive_halving", "reduction_factor": 1}}, "reduction_factor = 1 must be >= 2"),
    ({"pruner": {"name": "hyperband", "max_resource": 0}}, "pruner.max_resource = 0 must be >= 1"),
    ({"pruner": {"name": "threshold"}}, "pruner threshold needs lower, upper or both"),
    ({"pruner": {"name": "threshold", "lower": 5, "upper": 1.0}}, "lower 5 must be below upper 1.0"),
    ({"overrides": ["run.resume=false"]}, "are set by the sweep"),
    ({"space": {"optim.name": {"type": "categorical", "choices": ["sgd"]},
                "optim.momentum": {"type": "float", "low": 0.8, "high": 0.9, "when": {"optim.name": "SGD"}}}},
     "optim.name = 'SGD' is not one of its values"),
    ({"space": {"optim.lr": {"type": ["float"], "low": 0.1, "high": 1.0}}}, "needs type: float, int or categorical"),
])
def test_bad_specs_are_refused_in_one_line_naming_the_value(changes, words):
    with pytest.raises(UsageError) as err:
        spec_with(**changes)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_study_directory_refuses_another_space_and_takes_a_new_budget(tmp_path):
    study = StudyDir(tmp_path / "study")
    study.create_or_check(spec_with(), None)
    assert (tmp_path / "study" / "journal.log").is_file() and study.exists()
    study.create_or_check(spec_with(trials=12), None)  # the same search, a larger budget
    assert study.spec().trials == 12
    other = dict(BASE["space"], **{"optim.lr": {"type": "float", "low": 0.1, "high": 2.0}})
    with pytest.raises(UsageError, match="created with another space"):
        study.create_or_check(spec_with(space=other), None)
    with pytest.raises(UsageError, match="created with another metric"):
        study.create_or_check(spec_with(metric="loss"), None)


def test_a_bad_spec_exits_2_with_one_line_and_creates_nothing(tmp_path):
    bad = dict(BASE, space={"optim.lr": {"type": "float", "low": 2.0, "high": 1.0}})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    result = visiontrain_cli("sweep", "run", path, "--study", tmp_path / "study")
    assert result.returncode == 2, result.stderr
    assert "empty range low=2.0 high=1.0" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "study").exists()
    missing = visiontrain_cli("sweep", "status", tmp_path / "nothing")
    assert missing.returncode == 2 and "is not a study directory" in missing.stderr


def test_an_unusable_storage_url_is_refused_before_the_study_directory_exists(tmp_path):
    with pytest.raises(UsageError, match="--storage nosuchdb://x: cannot be opened"):
        StudyDir(tmp_path / "study").create_or_check(spec_with(), "nosuchdb://x")
    assert not (tmp_path / "study").exists()


def test_a_non_empty_folder_that_is_no_study_is_refused(tmp_path):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="exists, is not empty and is not a study directory"):
        StudyDir(tmp_path / "study").create_or_check(spec_with(), None)
    assert sorted(p.name for p in Path(tmp_path / "study").iterdir()) == ["notes.txt"]


def test_seeded_samplers_of_consecutive_trials_draw_unrelated_values():
    import optuna

    from visiontrain.sweep.study import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    firsts = []
    for number in range(8):
        study = optuna.create_study(sampler=make_sampler({"name": "random", "seed": 0}, trial_number=number))
        firsts.append(study.ask().suggest_float("x", 0.0, 1.0))
    assert len(set(firsts)) == 8 and abs(firsts[0] - firsts[3]) > 0.01, firsts  # seed + number: 0.5488, 0.5508
    again = optuna.create_study(sampler=make_sampler({"name": "random", "seed": 0}, trial_number=3))
    assert again.ask().suggest_float("x", 0.0, 1.0) == firsts[3]  # and the same trial draws the same again
