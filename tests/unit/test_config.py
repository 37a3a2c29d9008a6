
import dataclasses

import pytest
import yaml

from tests.helpers import ROOT
from visiontrain.config import Config, all_keys, load_config, to_yaml
from visiontrain.infra.errors import UsageError, run_cli
from visiontrain.parallel.batch_plan import BatchPlan
from visiontrain.train.cli import main as train_main


def error_of(*overrides: str, path=None) -> str:
    with pytest.raises(UsageError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


def test_defaults_are_the_documented_cifar10_resnet18_run_on_ffcv():
    cfg = load_config()
    assert (cfg.model.name, cfg.model.num_classes, cfg.data.path) == ("cifar_resnet18", 10, "data/cifar10")
    assert cfg.data.loader == "ffcv"


def test_yaml_then_overrides_with_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.3\ntrain:\n  epochs: 5\n"
                    "schedule:\n  milestones: [1, 2]\n  name: step\n  warmup_epochs: 1\n")
    cfg = load_config(path, ["optim.lr=0.2", "train.epochs=3", "model.channels_last=false"])
    assert cfg.optim.lr == 0.2 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 3 and cfg.model.channels_last is False
    assert list(cfg.schedule.milestones) == [1.0, 2.0]


def test_unknown_key_suggests_the_closest_valid_key():
    assert error_of("optim.lrr=0.1") == \
        "unknown config key 'optim.lrr' in override 'optim.lrr=0.1'; did you mean 'optim.lr'?"
    assert "did you mean 'train'" in error_of("trian.epochs=3")


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochz: 3\n")
    message = error_of(path=path)
    assert "train.epochz" in message and str(path) in message and "train.epochs" in message


@pytest.mark.parametrize("override, key", [
    ("train.epochs=three", "train.epochs"),
    ("optim.lr=fast", "optim.lr"),
    ("model.channels_last=maybe", "model.channels_last"),
])
def test_wrong_type_names_key_and_value(override, key):
    message = error_of(override)
    assert key in message and override.split("=")[1] in message


@pytest.mark.parametrize("override, key, allowed", [
    ("optim.lr=-0.1", "optim.lr", "> 0"),
    ("optim.lr=nan", "optim.lr", "finite"),
    ("train.epochs=0", "train.epochs", ">= 1"),
    ("model.name=resnt50", "model.name", "did you mean 'resnet50'"),
    ("train.precision=fp8", "train.precision", "fp32, bf16, fp16"),
    ("data.loader=tfrecord", "data.loader", "ffcv, torchvision, device, random"),
    ("data.progressive_resizing=true", "data.progressive_resizing", "needs data.loader=ffcv and data.recipe=imagenet"),
    ("schedule.warmup_epochs=30", "schedule.warmup_epochs", "train.epochs"),
    ("train.label_smoothing=1.5", "train.label_smoothing", "[0, 1)"),
])
def test_impossible_values_name_key_and_allowed_range(override, key, allowed):
    message = error_of(override)
    assert f"'{key}'" in message and allowed in message


def test_width_belongs_to_the_cifar_models_only():
    assert load_config(None, ["model.name=resnet9", "model.width=32"]).model.width == 32
    assert "only the CIFAR models" in error_of("model.name=resnet50", "model.width=32")


def test_override_without_equals_sign_is_refused():
    assert "section.key=value" in error_of("optim.lr")


def test_global_batch_must_divide_over_world_and_accumulation():
    cfg = load_config(None, ["train.batch_size=96", "train.grad_accum_steps=2"])
    assert BatchPlan.for_world(cfg.train, 2) == BatchPlan(global_batch=96, world_size=2, accum_steps=2, micro_batch=24)
    with pytest.raises(UsageError, match="train.batch_size.*divisible by world size x train.grad_accum_steps = 5 x 2"):
        BatchPlan.for_world(cfg.train, 5)
    assert BatchPlan.for_world(cfg.train, 2).steps_per_epoch(1000) == 10  # 500 per rank // 24 // 2
    with pytest.raises(UsageError, match="do not fill one optimizer step of 96 images"):
        BatchPlan.for_world(cfg.train, 2).steps_per_epoch(95)


@pytest.mark.parametrize("old, new, value, expected", [
    ("data.backend", "data.loader", "torchvision", "torchvision"),
    ("data.backend", "data.loader", "synthetic", "random"),
    ("data.synthetic_train_samples", "data.random_train_samples", "64", 64),
    ("backend.name", "parallel.strategy", "deepspeed", "deepspeed"),
    ("backend.find_unused_parameters", "parallel.find_unused_parameters", "true", True),
])
def test_renamed_keys_work_for_one_release_with_a_warning_naming_the_new_key(old, new, value, expected, tmp_path):
    extra = ["parallel.deepspeed_config=configs/deepspeed/zero2.json"] if value == "deepspeed" else []
    section, key = new.split(".")
    with pytest.warns(FutureWarning, match=f"'{old}'.*deprecated.*use '{new}'"):
        cfg = load_config(None, [f"{old}={value}", *extra])
    assert getattr(getattr(cfg, section), key) == expected
    old_section, old_key = old.split(".")
    path = tmp_path / "old.yaml"  # a run dir's config.yaml written before the rename
    path.write_text(f"{old_section}:\n  {old_key}: {value}\n" + "".join(
        f"{e.split('.')[0]}:\n  {e.split('.')[1].split('=')[0]}: {e.split('=')[1]}\n" for e in extra))
    with pytest.warns(FutureWarning, match=f"use '{new}'"):
        assert getattr(getattr(load_config(path), section), key) == expected


def test_a_key_given_under_its_old_and_its_new_name_is_refused(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("data:\n  loader: torchvision\n  backend: ffcv\n")
    with pytest.warns(FutureWarning), pytest.raises(UsageError, match="sets 'data.loader' twice"):
        load_config(path)


def test_accelerate_deepspeed_config_selects_the_deepspeed_strategy():
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "configs/deepspeed/zero2.json"}
    cfg = load_config(None, [], env)
    assert (cfg.parallel.strategy, cfg.parallel.deepspeed_config) == ("deepspeed", "configs/deepspeed/zero2.json")
    with pytest.raises(UsageError, match="contradicts parallel.deepspeed_config"):
        load_config(None, ["parallel.strategy=deepspeed", "parallel.deepspeed_config=configs/deepspeed/zero3.json"],
                    env)
    with pytest.raises(UsageError, match="gradient_accumulation_steps = 4 contradicts train.grad_accum_steps=1"):
        load_config(None, [], {**env, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"})


def test_accelerate_starting_one_cpu_process_for_many_is_refused():
    env = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "False", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29500"}
    with pytest.raises(UsageError, match="started 1 process although --num_processes > 1"):
        load_config(None, ["train.precision=fp32"], env)
    load_config(None, ["train.precision=fp32"], {**env, "RANK": "0", "WORLD_SIZE": "2"})  # --multi_gpu: fine


def test_launcher_precision_and_compile_flags_must_not_contradict_the_config():
    with pytest.raises(UsageError, match="contradicts train.precision=fp32"):
        load_config(None, ["train.precision=fp32"], {"ACCELERATE_MIXED_PRECISION": "bf16"})
    load_config(None, ["train.precision=bf16"], {"ACCELERATE_MIXED_PRECISION": "bf16"})
    with pytest.raises(UsageError, match="model.compile=true"):
        load_config(None, ["train.precision=fp32"], {"ACCELERATE_MIXED_PRECISION": "no",
                                                     "ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"})


def test_accelerate_gradient_accumulation_must_agree_with_the_config_under_ddp_too():
    # accelerate's backward would divide each loss by its own count on top of train.grad_accum_steps.
    with pytest.raises(UsageError, match="gradient_accumulation_steps = 4 contradicts train.grad_accum_steps=1"):
        load_config(None, [], {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"})
    cfg = load_config(None, ["train.grad_accum_steps=4", "train.batch_size=512"],
                      {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"})
    assert cfg.parallel.strategy == "ddp"


def test_saved_yaml_reloads_to_the_same_config(tmp_path):
    cfg = load_config(None, ["optim.lr=0.123", "model.name=resnet50", "data.mean=[0.1,0.2,0.3]",
                               "data.std=[0.2,0.2,0.2]"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg
    assert set(all_keys()) >= {"optim.lr", "run.dir", "train.precision"}


def test_every_shipped_config_loads(monkeypatch):
    from visiontrain.sweep.spec import read_spec

    monkeypatch.chdir(ROOT)  # a sweep spec names its base config relative to the checkout
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        if "accelerate" in path.parts:
            continue  # accelerate launcher configs, not ours
        if "sweeps" in path.parts:
            read_spec(path)  # sweep specs: checked against the config they search
            continue
        load_config(path)


def train_cli(argv: list[str], capsys) -> tuple[int, str]:
    """train.py's entry point in this process: (exit code, last line on stderr)."""
    code = run_cli(train_main, argv)
    return code, capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_config_error_exits_2_and_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, line = train_cli(["-c", "configs/demo/train.yaml", f"run.dir={run_dir}", "optim.lrr=0.1"], capsys)
    assert code == 2
    assert line == "error: unknown config key 'optim.lrr' in override 'optim.lrr=0.1'; did you mean 'optim.lr'?"
    assert not run_dir.exists()


def test_cli_missing_data_names_the_data_prep_command(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cifar = tmp_path / "cifar10"
    code, line = train_cli([f"run.dir={run_dir}", f"data.path={cifar}", "run.device=cpu"], capsys)
    assert code == 2
    assert line == (f"error: no train.beton in data.path={cifar} (data.loader=ffcv); "
                    f"create it with `python -m visiontrain prep cifar10 --out {cifar}`")
    code, line = train_cli([f"run.dir={run_dir}", "data.loader=torchvision", f"data.path={tmp_path / 'nothing'}",
                            "run.device=cpu"], capsys)
    assert code == 2
    assert "no dataset at data.path=" in line and "python -m visiontrain prep" in line
    assert not run_dir.exists()


def test_config_dataclass_has_every_documented_section():
    assert set(yaml.safe_load(to_yaml(Config()))) == {
        "run", "data", "augment", "model", "optim", "schedule", "train", "checkpoint", "parallel", "finetune", "log",
        "adversarial"}


def test_each_section_names_itself_as_config_does():
    # The name a section puts in its error messages is its field name in Config.
    for section in dataclasses.fields(Config):
        assert section.default_factory.section == section.name


def test_lookahead_is_refused_with_deepspeed_in_one_line():
    with pytest.raises(UsageError, match="train.lookahead_every_steps.*deepspeed"):
        load_config(None, ["parallel.strategy=deepspeed", "parallel.deepspeed_config=configs/deepspeed/zero2.json",
                           "train.lookahead_every_steps=5"])
