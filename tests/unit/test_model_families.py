"""timm and torchvision families: layer-wise lr decay that the schedule really applies, no decay on position
embeddings and class tokens, freezing by stages, BatchNorm settings kept, and starting weights from Hugging
Face snapshots (local cache, folder), torchvision .pth files and timm's position-embedding resampling."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from visiontrain.config import FinetuneConfig, ModelConfig, OptimConfig, ScheduleConfig
from visiontrain.infra.errors import UsageError
from visiontrain.models import build_model, spec_of
from visiontrain.train.finetune import freeze, keep_frozen_bn_in_eval, load_initial_weights
from visiontrain.train.optim import build_optimizer, build_scheduler, layer_decay_scales, lr_factor

VIT = "timm/vit_tiny_patch16_224"


def vit(num_classes: int = 10, img_size: int = 32, seed: int = 0, **extra):
    torch.manual_seed(seed)
    return build_model(ModelConfig(name=VIT, num_classes=num_classes, kwargs={"img_size": img_size, "patch_size": 8,
                                                                               "depth": 4, **extra}))


# ------------------------------------------------------------------ layer-wise lr decay
def test_layer_decay_gives_each_block_its_rate_and_the_schedule_scales_them_all():
    model = vit()
    spec = spec_of(VIT)
    cfg = OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    optimizer = build_optimizer(model, cfg, spec)
    schedule = ScheduleConfig(name="cosine", warmup_epochs=1)
    scheduler = build_scheduler(optimizer, schedule, steps_per_epoch=4, epochs=3)
    depths, blocks = spec.depths(model, True)
    # timm's grouping: patch embedding and tokens 0, blocks 1..4 (the final norm with the last), head 5
    assert blocks == 4 and depths["norm.weight"] == depths["blocks.3.mlp.fc1.weight"] == 4
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    expected_scale = {name: 0.5 ** (5 - depths[name]) if name in depths else 1.0 for name in named}
    assert expected_scale["cls_token"] == 0.5**5 and expected_scale["blocks.0.attn.qkv.weight"] == 0.5**4
    assert expected_scale["norm.weight"] == 0.5 and expected_scale["head.weight"] == 1.0
    for step in range(7):  # the rates follow the schedule, each at its own scale
        factor = lr_factor(step, schedule, 4, 12)
        for name, param in named.items():
            assert math.isclose(group_of[id(param)]["lr"], 1e-3 * expected_scale[name] * factor, rel_tol=1e-9)
        optimizer.step()
        scheduler.step()
    assert len({round(g["lr"], 15) for g in optimizer.param_groups}) == 6  # six depths, six rates


def test_a_final_norm_after_the_blocks_keeps_the_heads_rate_as_in_timm():
    """ConvNeXt's head.norm follows the last stage: it shares the classifier's rate, and the last block gets
    one factor of decay (timm's param_groups_layer_decay gives the same scales)."""
    from timm.optim import param_groups_layer_decay

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="timm/convnext_atto"))
    scales = layer_decay_scales(model, spec_of("timm/convnext_atto"), 0.5)
    assert scales["head.norm.weight"] == 1.0 and scales["stages.3.blocks.1.conv_dw.weight"] == 0.5
    theirs = {name: group["lr_scale"] for group in param_groups_layer_decay(model, layer_decay=0.5)
              for name, param in model.named_parameters() if any(param is p for p in group["params"])}
    assert all(math.isclose(scales.get(name, 1.0), theirs[name]) for name in theirs)


def test_heads_are_every_layer_that_outputs_the_classes_and_no_decay_patterns_are_globs():
    assert spec_of("timm/levit_128s").heads == ("head.linear", "head_dist.linear")  # the distillation head too
    xcit = build_model(ModelConfig(name="timm/xcit_nano_12_p16_224", kwargs={"depth": 1}))
    assert "pos_embed.token_projection.weight" in spec_of("timm/xcit_nano_12_p16_224").no_weight_decay(xcit)


def test_position_embeddings_class_tokens_norms_and_biases_get_no_weight_decay():
    model = vit()
    optimizer = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.05), spec_of(VIT))
    decay = {name: g["weight_decay"] for name, p in model.named_parameters() for g in optimizer.param_groups
             if any(p is q for q in g["params"])}
    assert decay["pos_embed"] == decay["cls_token"] == decay["norm.weight"] == decay["head.bias"] == 0.0
    assert decay["blocks.0.attn.qkv.weight"] == decay["patch_embed.proj.weight"] == 0.05


def test_torchvision_vit_tokens_and_convnext_layer_scales_are_not_decayed():
    with torch.device("meta"):  # names only: no memory, no init time
        tv_vit = build_model(ModelConfig(name="torchvision/vit_b_32", kwargs={"image_size": 32}))
        tv_convnext_model = build_model(ModelConfig(name="torchvision/convnext_tiny"))
    assert spec_of("torchvision/vit_b_32").no_weight_decay(tv_vit) == {"class_token", "encoder.pos_embedding"}
    tv_convnext = spec_of("torchvision/convnext_tiny")
    names = tv_convnext.no_weight_decay(tv_convnext_model)
    assert names and all(name.endswith("layer_scale") for name in names)


# ------------------------------------------------------------------ freezing and BatchNorm
def test_freezing_timm_stages_keeps_them_bit_identical_and_their_batchnorm_statistics():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="timm/resnet10t", num_classes=5))
    spec = spec_of("timm/resnet10t")
    depths, stages = spec.depths(model, False)
    assert stages == 4
    freeze(model, spec, "stages:2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for _ in range(2):
        model.train()
        keep_frozen_bn_in_eval(model)
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    frozen = [k for k in after if k.startswith(("conv1", "bn1", "layer1", "layer2"))]
    trained = [k for k in after if k.startswith(("layer4", "fc")) and after[k].is_floating_point()]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # running statistics included
    assert trained and all(not torch.equal(before[k], after[k]) for k in trained)
    with pytest.raises(UsageError, match="timm/resnet10t has 4 stages; allowed stages:1..stages:4"):
        freeze(build_model(ModelConfig(name="timm/resnet10t")), spec, "stages:5")


def test_library_models_keep_their_own_batchnorm_epsilon_unless_the_config_sets_another():
    def eps(**settings):
        model = build_model(ModelConfig(name="timm/tf_mobilenetv3_small_minimal_100", **settings))
        return {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}

    assert eps() == {1e-3}  # the TensorFlow ports' epsilon, which their published weights need
    assert eps(bn_eps=1e-4) == {1e-4}


# ------------------------------------------------------------------ starting weights
def save_snapshot(folder, model, architecture: str, **pretrained_cfg):
    """A model's weights in the layout timm publishes on the Hugging Face hub."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": architecture, "num_classes": 7,
                                                    "pretrained_cfg": pretrained_cfg}))


def hub_cache(home, repo_id: str):
    """$HF_HOME/hub/models--org--name/snapshots/<revision>/, with refs/main naming it."""
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    return repo / "snapshots" / "0123abcd"


def test_hf_hub_weights_come_from_the_local_cache_and_never_from_the_network(tmp_path, monkeypatch):
    source = vit(num_classes=7, seed=1)
    save_snapshot(hub_cache(tmp_path / "hf", "timm/vit_tiny_test"), source, "vit_tiny_patch16_224")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    model = vit(num_classes=10, seed=2)
    info = load_initial_weights(model, spec_of(VIT), FinetuneConfig(init_from="hf-hub:timm/vit_tiny_test"))
    assert info["head_replaced"] and info["init_from"].endswith("snapshots/0123abcd/model.safetensors")
    mine, theirs = model.state_dict(), source.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs if not k.startswith("head."))
    assert mine["head.weight"].shape == (10, 192)
    with pytest.raises(UsageError, match="timm/absent is not in the local Hugging Face cache .*hf download"):
        load_initial_weights(vit(), spec_of(VIT), FinetuneConfig(init_from="hf-hub:timm/absent"))


def test_a_snapshot_folder_at_another_resolution_gets_its_position_embeddings_resampled(tmp_path):
    save_snapshot(tmp_path / "snap", vit(num_classes=10, img_size=32, seed=1), "vit_tiny_patch16_224")
    model = vit(num_classes=10, img_size=64)
    load_initial_weights(model, spec_of(VIT), FinetuneConfig(init_from=str(tmp_path / "snap")))
    assert model.pos_embed.shape == (1, 1 + 64, 192)  # 8x8 patches and the class token, resampled from 4x4
    assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()


def test_weights_of_another_architecture_are_one_line_naming_the_mismatch(tmp_path):
    save_snapshot(tmp_path / "snap", build_model(ModelConfig(name="timm/resnet10t")), "resnet10t")
    with pytest.raises(UsageError, match=r"does not fit") as err:
        load_initial_weights(vit(), spec_of(VIT), FinetuneConfig(init_from=str(tmp_path / "snap")))
    assert "\n" not in str(err.value)


def test_torchvision_pth_files_load_into_torchvision_models_and_pickled_objects_are_refused(tmp_path):
    torch.manual_seed(3)
    source = build_model(ModelConfig(name="torchvision/mobilenet_v3_small", num_classes=1000))
    torch.save(source.state_dict(), tmp_path / "mobilenet_v3_small-047dcff4.pth")  # torchvision's file name
    model = build_model(ModelConfig(name="torchvision/mobilenet_v3_small", num_classes=10))
    spec = spec_of("torchvision/mobilenet_v3_small")
    pth = tmp_path / "mobilenet_v3_small-047dcff4.pth"
    info = load_initial_weights(model, spec, FinetuneConfig(init_from=str(pth)))
    assert info["head_replaced"] and spec.heads == ("classifier.3",)
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)
    torch.save({"model": source, "note": object}, tmp_path / "pickled.bin")  # a whole module: needs unpickling
    with pytest.raises(UsageError, match="not a readable PyTorch state dict"):
        load_initial_weights(model, spec, FinetuneConfig(init_from=str(tmp_path / "pickled.bin")))


def test_torchvision_weights_of_auxiliary_classifiers_are_dropped_for_a_model_built_without_them(tmp_path):
    torch.manual_seed(4)
    source = build_model(ModelConfig(name="torchvision/googlenet", num_classes=1000, kwargs={"aux_logits": True}))
    torch.save(source.state_dict(), tmp_path / "googlenet-1378be20.pth")
    model = build_model(ModelConfig(name="torchvision/googlenet", num_classes=1000))
    info = load_initial_weights(model, spec_of("torchvision/googlenet"),
                                FinetuneConfig(init_from=str(tmp_path / "googlenet-1378be20.pth"), keep_head=True))
    assert not info["head_replaced"] and torch.equal(model.fc.weight, source.fc.weight)


def test_models_that_check_their_state_dict_version_load_plain_weights_files(tmp_path):
    # MNASNet refuses a state dict without module versions; safetensors files carry none.
    torch.manual_seed(5)
    source = build_model(ModelConfig(name="torchvision/mnasnet0_5", num_classes=10))
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "weights.safetensors")
    model = build_model(ModelConfig(name="torchvision/mnasnet0_5", num_classes=10))
    info = load_initial_weights(model, spec_of("torchvision/mnasnet0_5"),
                                FinetuneConfig(init_from=str(tmp_path / "weights.safetensors"), keep_head=True))
    assert not info["head_replaced"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))


def test_fixed_size_errors_name_each_familys_size_keyword():
    from visiontrain.config import load_config

    size_448 = ["data.image_size=448", "data.val_image_size=448"]
    with pytest.raises(UsageError, match=r"model.kwargs.input_size=\[448,448\] to build it"):
        load_config(None, ["model.name=torchvision/maxvit_t", *size_448])
    with pytest.raises(UsageError, match="model.kwargs.image_size=32 to build it"):
        load_config(None, ["model.name=torchvision/vit_b_16"])
    assert load_config(None, ["model.name=torchvision/maxvit_t", "model.kwargs.input_size=[448,448]", *size_448])


def test_images_smaller_than_an_architecture_takes_are_refused_before_it_fails_inside():
    from visiontrain.config import load_config

    specs = {name: spec_of(name).min_input_size for name in
             ("torchvision/inception_v3", "torchvision/maxvit_t", "torchvision/vit_b_16", "torchvision/swin_t",
              "timm/lambda_resnet26t", "timm/resnet10t")}
    # torchvision's stated minimum of ViT and Swin is their weights' resolution: the architectures take less
    assert specs == {"torchvision/inception_v3": 75, "torchvision/maxvit_t": 224, "torchvision/vit_b_16": 1,
                     "torchvision/swin_t": 1, "timm/lambda_resnet26t": 128, "timm/resnet10t": 1}
    with pytest.raises(UsageError, match=r"'data.image_size' = 64 is invalid: torchvision/inception_v3 takes "
                                         r"images of at least 75 px"):
        load_config(None, ["model.name=torchvision/inception_v3", "data.image_size=64", "data.val_image_size=80"])
    with pytest.raises(UsageError, match=r"'data.min_res' = 64 is invalid: .* at least 75 px"):
        load_config(None, ["model.name=torchvision/inception_v3", "data.image_size=80", "data.val_image_size=80",
                           "data.progressive_resizing=true", "data.min_res=64", "data.max_res=96",
                           "data.ramp_end_epoch=2", "data.loader=ffcv", "data.recipe=imagenet"])
    with pytest.raises(UsageError, match=r"at least 224 px"):
        load_config(None, ["model.name=torchvision/maxvit_t", "data.loader=random"])
    model = build_model(ModelConfig(name="torchvision/inception_v3", num_classes=10)).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 75, 75)).shape == (1, 10)  # the minimum really runs


def test_a_size_the_architecture_fails_on_is_one_line_naming_the_key_and_changes_nothing():
    from visiontrain.config import load_config
    from visiontrain.models.size_check import check_image_sizes, image_sizes

    model = build_model(ModelConfig(name="timm/inception_v3", num_classes=10))  # timm states no minimum
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sizes = {96: "config key 'data.image_size'", 64: "config key 'data.val_image_size'"}
    with pytest.raises(UsageError, match=r"^config key 'data.val_image_size' = 64 is invalid: timm/inception_v3 "
                                         r"fails on one 64 px image \(RuntimeError: .+\); use a size the "
                                         r"architecture takes$"):
        check_image_sizes(model, "timm/inception_v3", sizes, built_for=299)
    check_image_sizes(model, "timm/inception_v3", {75: "config key 'data.image_size'"}, built_for=299)
    check_image_sizes(model, "timm/inception_v3", sizes, built_for=32)  # at or above the built size: not probed
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    def sizes_of(*overrides):
        return image_sizes(load_config(None, list(overrides)))

    assert sizes_of("data.image_size=80", "data.val_image_size=96") == {
        80: "config key 'data.image_size'", 96: "config key 'data.val_image_size'"}
    assert sizes_of("data.loader=random", "data.image_size=224") == {224: "config key 'data.image_size'"}
    progressive = sizes_of("data.image_size=80", "data.val_image_size=224", "data.progressive_resizing=true",
                           "data.min_res=160", "data.max_res=200", "data.ramp_start_epoch=1", "data.ramp_end_epoch=3",
                           "train.epochs=5", "data.loader=ffcv", "data.recipe=imagenet")
    # the schedule's sizes, rounded down to data.res_multiple (32): 160, 160, 160, 192, 192; not image_size's 80
    assert sorted(progressive) == [160, 192, 224] and "epoch 3" in progressive[192]


def test_reserved_kwargs_point_to_the_projects_own_keys():
    with pytest.raises(UsageError, match="'model.kwargs.pretrained' is invalid .* set finetune.init_from"):
        build_model(ModelConfig(name="timm/resnet10t", kwargs={"pretrained": True}))
    with pytest.raises(UsageError, match="model.kwargs.*resnet9 takes none"):
        build_model(ModelConfig(name="resnet9", kwargs={"drop_path_rate": 0.1}))


# ------------------------------------------------------------------ the input contract
def test_normalization_and_crop_left_empty_come_from_the_model_and_stay_overridable(tmp_path):
    from visiontrain.config import load_config, to_yaml

    size = ["data.image_size=224", "data.val_image_size=224"]
    vit_cfg = load_config(None, ["model.name=timm/vit_small_patch16_224.augreg_in21k", *size])
    assert (vit_cfg.data.mean, vit_cfg.data.std, vit_cfg.data.val_crop_ratio) == ([0.5] * 3, [0.5] * 3, 0.9)
    assert "- 0.5" in to_yaml(vit_cfg)  # the run's config.yaml records the values used
    tv = load_config(None, ["model.name=torchvision/resnet50", *size]).data
    assert (tv.mean, tv.std, tv.val_crop_ratio) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 0.875)
    own = load_config(None, []).data  # the project's own models: CIFAR-10's statistics, as before
    assert own.mean == [0.4914, 0.4822, 0.4465] and own.val_crop_ratio == 0.875
    mine = load_config(None, ["model.name=timm/vit_small_patch16_224.augreg_in21k", *size, "data.mean=[0.1,0.2,0.3]",
                              "data.std=[0.2,0.2,0.2]", "data.val_crop_ratio=1.0"]).data
    assert mine.mean == [0.1, 0.2, 0.3] and mine.std == [0.2] * 3 and mine.val_crop_ratio == 1.0
    with pytest.raises(UsageError, match=r"'data.std' = \[\] is invalid: empty while data.mean is set: set both"):
        load_config(None, ["model.name=timm/vit_small_patch16_224.augreg_in21k", *size, "data.mean=[0.1,0.2,0.3]"])


def test_channels_last_left_empty_is_on_for_convolutional_networks_and_off_for_patch_transformers():
    from visiontrain.config import load_config

    def chosen(*overrides: str) -> bool:
        return load_config(None, list(overrides)).model.channels_last

    assert chosen() is True and chosen("model.name=timm/convnext_atto") is True
    assert chosen("model.name=torchvision/maxvit_t", "data.image_size=224", "data.val_image_size=224") is True
    assert chosen("model.name=timm/vit_tiny_patch16_224", "model.kwargs.img_size=32") is False
    assert chosen("model.name=torchvision/swin_t") is False
    assert chosen("model.name=timm/vit_tiny_patch16_224", "model.kwargs.img_size=32",
                  "model.channels_last=true") is True  # the config's choice wins
    assert chosen("model.channels_last=false") is False
