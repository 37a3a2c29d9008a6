"""Starting weights (every finetune.init_from kind), head replacement, freeze policies."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from visiontrain.checkpoint import CheckpointStore
from visiontrain.config import FinetuneConfig, ModelConfig, load_config
from visiontrain.infra.errors import UsageError
from visiontrain.models import build_model, spec_of
from visiontrain.train.finetune import freeze, keep_frozen_bn_in_eval, load_initial_weights, prepare_model

CIFAR18 = spec_of("cifar_resnet18")


def cifar18(num_classes: int = 10, width: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(name="cifar_resnet18", num_classes=num_classes, width=width))


def equal(a: dict, b: dict, skip_head: bool = False) -> bool:
    keys = [k for k in a if not (skip_head and k.startswith("fc."))]
    return all(torch.equal(a[k], b[k]) for k in keys)


def run_dir_with_checkpoint(tmp_path, weights: dict, ema: dict | None = None):
    run = tmp_path / "run"
    state = {"model": weights, "ema": ({f"module.{k}": v for k, v in ema.items()} | {"n_averaged": torch.tensor(3)})
             if ema else None, "trainer": {"step": 3}}
    CheckpointStore(run, keep_last=2).save(state, step=3, periodic=True, best=False)
    return run


# ------------------------------------------------------------------ init_from kinds
def test_run_dir_weights_safetensors_are_loaded(tmp_path):
    source = cifar18(seed=1).state_dict()
    run = tmp_path / "run"
    run.mkdir()
    save_file(source, str(run / "weights.safetensors"))
    model = cifar18(seed=2)
    info = load_initial_weights(model, CIFAR18, FinetuneConfig(init_from=str(run)))
    assert equal(model.state_dict(), source)
    assert info["init_from"].endswith("weights.safetensors") and not info["head_replaced"]


def test_run_dir_without_export_uses_newest_checkpoint_and_its_ema(tmp_path):
    weights, ema = cifar18(seed=1).state_dict(), cifar18(seed=3).state_dict()
    run = run_dir_with_checkpoint(tmp_path, weights, ema)
    model = cifar18(seed=2)
    load_initial_weights(model, CIFAR18, FinetuneConfig(init_from=str(run)))
    assert equal(model.state_dict(), weights)
    load_initial_weights(model, CIFAR18, FinetuneConfig(init_from=str(run), use_ema=True))
    assert equal(model.state_dict(), ema)


def test_use_ema_without_ema_weights_is_refused(tmp_path):
    run = run_dir_with_checkpoint(tmp_path, cifar18().state_dict())
    with pytest.raises(UsageError, match="has no EMA weights"):
        load_initial_weights(cifar18(), CIFAR18, FinetuneConfig(init_from=str(run), use_ema=True))


def test_safetensors_file_with_wrapper_prefixes(tmp_path):
    source = cifar18(seed=1).state_dict()
    path = tmp_path / "w.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in source.items()}, str(path))
    model = cifar18(seed=2)
    load_initial_weights(model, CIFAR18, FinetuneConfig(init_from=str(path)))
    assert equal(model.state_dict(), source)


def test_torchvision_state_dict_with_another_head_replaces_the_head(tmp_path, caplog):
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet.state_dict(), path)
    torch.manual_seed(5)
    model = build_model(ModelConfig(name="resnet18", num_classes=7))
    fresh_head = model.fc.weight.detach().clone()
    caplog.set_level("INFO")
    info = load_initial_weights(model, spec_of("resnet18"), FinetuneConfig(init_from=str(path)))
    assert info["head_replaced"]
    assert equal(model.state_dict(), imagenet.state_dict(), skip_head=True)
    assert torch.equal(model.fc.weight, fresh_head)  # the new head keeps its fresh initialisation
    assert "classifier head replaced: the weights have a 1000-class head, the model 7 classes" in caplog.text


def test_keep_head_refuses_another_class_count(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(cifar18(num_classes=10).state_dict(), str(path))
    with pytest.raises(UsageError, match="10-class head and the model 5 classes: set model.num_classes=10 or drop "
                                         "finetune.keep_head=true"):
        load_initial_weights(cifar18(num_classes=5), CIFAR18, FinetuneConfig(init_from=str(path), keep_head=True))


def test_shape_mismatch_outside_the_head_names_the_first_keys(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(cifar18(width=16).state_dict(), str(path))
    with pytest.raises(UsageError) as err:
        load_initial_weights(cifar18(width=8), CIFAR18, FinetuneConfig(init_from=str(path)))
    message = str(err.value)
    assert "\n" not in message
    assert "shape mismatch at conv1.weight (weights [16, 3, 3, 3], model [8, 3, 3, 3])" in message


def test_another_architecture_lists_missing_keys(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(UsageError, match="missing layer1.2"):
        load_initial_weights(build_model(ModelConfig(name="resnet34")), spec_of("resnet34"),
                             FinetuneConfig(init_from=str(path)))


@pytest.mark.parametrize("name, content", [("w.safetensors", b"\x00garbage" * 10), ("w.pth", b"PK\x03\x04junk")])
def test_corrupt_file_is_a_one_line_usage_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UsageError, match=f"finetune.init_from='{path}' is not a readable") as err:
        load_initial_weights(cifar18(), CIFAR18, FinetuneConfig(init_from=str(path)))
    assert "\n" not in str(err.value)


def test_missing_path_unknown_suffix_and_non_run_dir(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_initial_weights(cifar18(), CIFAR18, FinetuneConfig(init_from=str(tmp_path / "nope")))
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(UsageError, match="unknown file type '.npz'"):
        load_initial_weights(cifar18(), CIFAR18, FinetuneConfig(init_from=str(tmp_path / "w.npz")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="is it a run directory"):
        load_initial_weights(cifar18(), CIFAR18, FinetuneConfig(init_from=str(tmp_path / "empty")))


def test_finetune_config_errors():
    with pytest.raises(UsageError, match="'finetune.freeze' = 'stages:0' is invalid: allowed none, backbone"):
        load_config(None, ["finetune.freeze=stages:0"])
    with pytest.raises(UsageError, match="finetune.use_ema.*only read with finetune.init_from"):
        load_config(None, ["finetune.use_ema=true"])
    with pytest.raises(UsageError, match="optim.backbone_lr_mult"):
        load_config(None, ["optim.backbone_lr_mult=-1"])
    with pytest.raises(UsageError, match="data.train_fraction"):
        load_config(None, ["data.train_fraction=0"])


# ------------------------------------------------------------------ freeze policies
def train_steps(model, steps: int = 3):
    """A few SGD steps with weight decay on random data, the trainer's mode handling included."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    torch.manual_seed(0)
    for _ in range(steps):
        model.train()
        keep_frozen_bn_in_eval(model)
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 16, 16)), torch.randint(0, 10, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def changed_keys(model, policy: str) -> tuple[set[str], set[str], torch.optim.Optimizer]:
    counts = freeze(model, CIFAR18, policy)
    assert counts["frozen"] + counts["trainable"] == sum(p.numel() for p in model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = train_steps(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    return changed, set(before) - changed, opt


def test_freeze_backbone_is_a_linear_probe():
    model = cifar18()
    changed, unchanged, opt = changed_keys(model, "backbone")
    assert changed == {"fc.weight", "fc.bias"}  # BN running statistics of the backbone included
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("fc."))


def test_freeze_stages_keeps_stem_and_first_stages_bit_for_bit():
    model = cifar18()
    changed, unchanged, _ = changed_keys(model, "stages:2")
    frozen_prefixes = ("conv1.", "bn1.", "layer1.", "layer2.")
    assert {k for k in unchanged if not k.endswith("num_batches_tracked")} == {
        k for k in model.state_dict() if k.startswith(frozen_prefixes) and not k.endswith("num_batches_tracked")}
    assert any(k.startswith("layer3.") for k in changed) and any(k.startswith("layer4.") for k in changed)
    assert "fc.weight" in changed


def test_freeze_stages_beyond_the_model_is_refused():
    resnet9 = build_model(ModelConfig(name="resnet9", width=8))
    with pytest.raises(UsageError, match="resnet9 has 3 stages; allowed stages:1..stages:3"):
        freeze(resnet9, spec_of("resnet9"), "stages:4")


def test_freeze_bn_keeps_bn_parameters_and_statistics():
    model = cifar18()
    changed, unchanged, _ = changed_keys(model, "bn")
    bn_keys = {k for k in model.state_dict() if ".bn" in f".{k}" or "downsample.1" in k}
    assert bn_keys and bn_keys <= unchanged  # weight, bias, running_mean/var, num_batches_tracked
    convs = {k for k in model.state_dict() if k.endswith("conv1.weight") or k.endswith("conv2.weight")}
    assert convs <= changed


def test_freeze_none_trains_everything():
    model = cifar18()
    changed, unchanged, _ = changed_keys(model, "none")
    assert {k for k in unchanged if k.startswith("layer")} == set()


def test_prepare_model_loads_then_freezes(tmp_path):
    source = cifar18(seed=1)
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    model = cifar18(num_classes=4, seed=2)
    info = prepare_model(model, CIFAR18, FinetuneConfig(init_from=str(path), freeze="backbone"))
    assert info["head_replaced"] and info["freeze"] == "backbone"
    assert info["trainable"] == model.fc.weight.numel() + model.fc.bias.numel()
    assert equal(model.state_dict(), source.state_dict(), skip_head=True)
