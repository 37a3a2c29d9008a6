import pytest
import torch
import torchvision

from visiontrain.config import ModelConfig
from visiontrain.models import MODEL_NAMES, build_model, last_bn_of_residual_branches


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_classifies_into_num_classes(name):
    model = build_model(ModelConfig(name=name, num_classes=7)).eval()
    size = 32 if name in ("cifar_resnet18", "resnet9") else 64
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 7)


def test_torchvision_resnets_match_torchvision_parameter_counts():
    for name, millions in [("resnet18", 11.69), ("resnet50", 25.56)]:
        model = build_model(ModelConfig(name=name, num_classes=1000))
        assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions


def test_cifar_resnet18_has_3x3_stride1_stem_no_maxpool_and_torchvision_names():
    model = build_model(ModelConfig(name="cifar_resnet18", num_classes=10))
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    reference = torchvision.models.resnet18(num_classes=10).state_dict()
    ours = model.state_dict()
    assert set(ours) == set(reference)
    assert [k for k in ours if ours[k].shape != reference[k].shape] == ["conv1.weight"]
    # 32x32 input keeps 32x32 resolution through layer1 (no stem downsampling)
    feats = model.layer1(model.relu(model.bn1(model.conv1(torch.randn(1, 3, 32, 32)))))
    assert feats.shape[-2:] == (32, 32)


def test_resnet9_width_scales_channels():
    narrow = build_model(ModelConfig(name="resnet9", width=16))
    wide = build_model(ModelConfig(name="resnet9", width=64))
    ratio = sum(p.numel() for p in wide.parameters()) / sum(p.numel() for p in narrow.parameters())
    assert 15 < ratio < 17  # conv weights scale with width squared


@pytest.mark.parametrize("name, blocks", [("resnet18", 8), ("resnet50", 16), ("cifar_resnet18", 8), ("resnet9", 2)])
def test_zero_init_residual_zeroes_exactly_the_last_bn_of_each_block(name, blocks):
    plain = build_model(ModelConfig(name=name))
    zeroed = build_model(ModelConfig(name=name, zero_init_residual=True))
    assert len(last_bn_of_residual_branches(zeroed)) == blocks
    assert all(bool((bn.weight == 0).all()) for bn in last_bn_of_residual_branches(zeroed))
    assert all(bool((bn.weight == 1).all()) for bn in last_bn_of_residual_branches(plain))
    zero_count = sum(int((m.weight == 0).all()) for m in zeroed.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert zero_count == blocks
