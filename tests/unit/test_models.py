import pytest
import torch
import torch.nn.functional as F
import torchvision

from visiontrain.config import ModelConfig
from visiontrain.models import MODEL_NAMES, build_model, spec_of
from visiontrain.models.resnets import residual_branch_ends


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_classifies_into_num_classes(name):
    model = build_model(ModelConfig(name=name, num_classes=7)).eval()
    size = min(spec_of(name).input_size, 64)  # ImageNet-sized models at 64 px: the same code paths, faster
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
    assert len(residual_branch_ends(zeroed)) == blocks
    assert all(bool((bn.weight == 0).all()) for bn in residual_branch_ends(zeroed))
    assert all(bool((bn.weight == 1).all()) for bn in residual_branch_ends(plain))
    zero_count = sum(int((m.weight == 0).all()) for m in zeroed.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert zero_count == blocks


def test_patch_whitening_decorrelates_the_patches_it_was_set_from():
    from visiontrain.models.cifar_fast import PatchWhitening

    torch.manual_seed(0)
    # Correlated channels and neighbouring pixels, as in photographs.
    base = torch.randn(256, 1, 17, 17)
    smooth = (base[..., 1:, 1:] + base[..., :-1, :-1] + base[..., 1:, :-1]) / 3
    images = torch.cat([smooth, 0.8 * smooth + 0.2 * torch.randn_like(smooth), torch.randn_like(smooth)], 1)
    layer = PatchWhitening()
    layer.init_from_images(images.contiguous(memory_format=torch.channels_last), eps=1e-7)
    with torch.no_grad():
        out = F.conv2d(images - images.mean((0, 2, 3), keepdim=True), layer.weight)[:, :12]
    covariance = torch.cov(out.permute(1, 0, 2, 3).reshape(12, -1))
    assert torch.allclose(covariance, torch.eye(12), atol=0.02)
    assert torch.equal(layer.weight[12:], -layer.weight[:12])
    assert not layer.weight.requires_grad and layer.bias.requires_grad


def test_cifar_fast_is_small_wide_and_whitened_from_data():
    from visiontrain.config import ModelConfig

    model = build_model(ModelConfig(name="cifar_fast", num_classes=10))
    assert [model.layer1[0].out_channels, model.layer2[0].out_channels, model.layer3[0].out_channels] == [64, 256, 256]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    before = model.whiten.weight.clone()
    model.init_from_data(torch.randn(64, 3, 32, 32))
    assert not torch.equal(before, model.whiten.weight)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 1.5e6 < trainable < 2.5e6 and model.whiten.weight.numel() == 24 * 12


@pytest.mark.parametrize("loader", ["ffcv", "torchvision", "device"])
def test_whitening_reads_the_end_of_epoch_0_and_leaves_the_loader_ready(shapes_dir, loader):
    import threading

    from tests.helpers import build_loaders
    from visiontrain.config import load_config
    from visiontrain.parallel.runtime import Runtime
    from visiontrain.train.run import init_from_training_images

    cfg = load_config("configs/demo/train.yaml", [f"data.loader={loader}", f"data.path={shapes_dir}",
                                                  "data.image_size=16", "data.val_image_size=16",
                                                  "data.num_workers=1", "model.name=cifar_fast", "model.width=8"])
    runtime = Runtime(accelerator=None, device=torch.device("cpu"), rank=0, world_size=1, local_rank=0,
                      launcher="single")
    train = build_loaders(cfg, runtime, 32).train
    model = build_model(cfg.model)
    seen = []
    model.init_from_data = lambda images: seen.append(images)
    def ffcv_epoch_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if type(t).__name__ == "EpochIterator"}

    before = ffcv_epoch_threads()  # other tests of this process may have left some
    init_from_training_images(model, train, count=100)
    assert seen[0].shape == (100, 3, 16, 16)  # ceil(100 / 32) = 4 batches, cut to 100 images
    for thread in ffcv_epoch_threads() - before:
        thread.join(timeout=10)  # a pass run to its end lets FFCV's thread finish; an abandoned one never does
    assert not {t for t in ffcv_epoch_threads() - before if t.is_alive()}
    train.set_epoch(0)
    epoch = torch.cat([images for images, _ in train])
    assert len(epoch) == 12 * 32 and torch.equal(seen[0], epoch[-128:][:100])  # the end of the same epoch 0


# The project's own models and a small member of each library family (built at 64 px where the size is fixed).
FAMILY_SAMPLES = {"timm/convnext_atto": {}, "timm/vit_tiny_patch16_224": {"img_size": 64},
                  "timm/mobilenetv3_small_050": {}, "timm/resnet10t": {}, "timm/levit_128s": {"img_size": 64},
                  "torchvision/mobilenet_v3_small": {}, "torchvision/squeezenet1_1": {},
                  "torchvision/regnet_x_400mf": {}, "torchvision/efficientnet_b0": {}}


@pytest.mark.parametrize("name", [*MODEL_NAMES, *FAMILY_SAMPLES])
def test_every_spec_describes_its_model(name):
    """The contract fine-tuning, the optimizer and the config rely on holds for every registered model and for
    the library families: the heads are the layers that output the classes, the depths cover every other
    parameter, from a stem to at least two stages."""
    spec = spec_of(name)
    model = build_model(ModelConfig(name=name, num_classes=7, width=16 if spec.has_width else 64,
                                    kwargs=FAMILY_SAMPLES.get(name, {})))
    heads = [model.get_submodule(head) for head in spec.heads]
    assert all(getattr(h, "out_features", getattr(h, "out_channels", None)) == 7 for h in heads)
    assert {n for n, _ in model.named_parameters() if spec.is_head(n)} == {
        f"{path}.{n}" for path, head in zip(spec.heads, heads) for n, _ in head.named_parameters()}
    for fine in (False, True):
        depths, stages = spec.depths(model, fine)
        assert set(depths) == {n for n, _ in model.named_parameters() if not spec.is_head(n)}
        assert stages >= 2 and set(range(1, stages + 1)) <= set(depths.values()) <= set(range(stages + 2))
    assert spec.input_size in (32, 176, 224)
    size = 64 if spec.input_size > 32 else 32
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_layer_settings_reach_every_batchnorm_and_a_frozen_scale_stays_one():
    model = build_model(ModelConfig(name="resnet18", bn_momentum=0.4, bn_eps=1e-12, bn_scale="frozen"))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 20
    assert {(m.momentum, m.eps) for m in norms} == {(0.4, 1e-12)}
    assert all(not m.weight.requires_grad and bool((m.weight == 1).all()) and m.bias.requires_grad for m in norms)
    default = build_model(ModelConfig(name="resnet18"))
    assert {(m.momentum, m.eps, m.weight.requires_grad) for m in default.modules()
            if isinstance(m, torch.nn.BatchNorm2d)} == {(0.1, 1e-5, True)}


def test_dirac_init_puts_the_identity_in_the_first_filters_of_odd_kernels_only():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="cifar_fast", width=16, conv_init="dirac"))
    conv = model.layer1[0]  # 24 -> 16 channels, 3x3
    identity = torch.zeros_like(conv.weight)
    for i in range(16):
        identity[i, i, 1, 1] = 1
    assert torch.equal(conv.weight, identity)  # out < in: every filter passes one input channel through
    wider = model.layer2[0]  # 16 -> 64
    assert torch.equal(wider.weight[:16], torch.nn.init.dirac_(torch.empty(16, 16, 3, 3)))
    torch.manual_seed(0)
    default = build_model(ModelConfig(name="cifar_fast", width=16))
    assert torch.equal(wider.weight[16:], default.layer2[0].weight[16:])  # the other filters: the default init
    assert torch.equal(model.whiten.weight, default.whiten.weight)  # 2x2 and frozen: no centre, left alone
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(torch.nn.functional.conv2d(x, wider.weight[:16], padding=1), x)


def test_frozen_bn_scale_cannot_be_combined_with_zero_init_residual():
    from visiontrain.infra.errors import UsageError

    with pytest.raises(UsageError, match="model.bn_scale"):
        ModelConfig(name="resnet18", bn_scale="frozen", zero_init_residual=True).validate()
