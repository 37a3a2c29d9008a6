"""Every model family exports to every format, and the exported file computes PyTorch's logits on real
images (CIFAR-10 JPEGs at 32 px, ImageNet photos at 64 px) for batches of 1 and 7 (a dynamic batch)."""

from __future__ import annotations

import pytest
import torch

from visiontrain.config import ModelConfig
from visiontrain.data.base import DeviceNormalizer
from visiontrain.data.preprocess import EvalPreprocess, image_files
from visiontrain.data.sources import read_image
from visiontrain.deploy.export import SUFFIXES, TOLERANCE, check_batches, compare, export_model, load_exported
from visiontrain.models import build_model

# (model, preprocessing, image source): the ImageNet networks at a small size to stay cheap on a CPU.
FAMILIES = {
    "resnet9": (EvalPreprocess(32, 32), "cifar"),
    "cifar_resnet18": (EvalPreprocess(32, 32), "cifar"),
    "resnet18": (EvalPreprocess(64, 73), "imagenet"),
    "resnet50": (EvalPreprocess(64, 73), "imagenet"),
}
pytestmark = pytest.mark.xdist_group("export")  # one process: two exporting at once only contend for the 2 cores
NORMALIZE = DeviceNormalizer([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], torch.device("cpu"), channels_last=False)


@pytest.fixture(scope="module")
def real_images(cifar_slice, imagenet_sample) -> dict[str, list]:
    """8 decoded images of each source."""
    files = {"cifar": image_files([str(cifar_slice / "train")])[::37][:8],
             "imagenet": image_files([str(imagenet_sample)])[::25][:8]}
    return {source: [read_image(path) for path in paths] for source, paths in files.items()}


@pytest.fixture(scope="module")
def family(request, real_images):
    """A model of the family with BatchNorm statistics of real images (random init would leave them at 0/1 and
    the logits nearly equal), in eval mode, and 8 preprocessed images."""
    name = request.param
    preprocess, source = FAMILIES[name]
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, num_classes=10, width=16))
    images = NORMALIZE(preprocess.batch(real_images[source]))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average of the passes below
    with torch.no_grad():
        model.train()
        model(images)
        model.eval()
    return name, model, images


@pytest.mark.parametrize("fmt", list(SUFFIXES))
@pytest.mark.parametrize("family", list(FAMILIES), indirect=True)
def test_exported_logits_equal_pytorch_for_batches_of_1_and_7(family, fmt, tmp_path):
    name, model, images = family
    path = tmp_path / f"{name}{SUFFIXES[fmt]}"
    opset = export_model(model, fmt, path, images[:2], dynamic_batch=True)
    assert (opset == 18) == (fmt == "onnx")
    exported = load_exported(path, fmt)
    batches = [images[:1], images[1:8]]
    result = compare(model, exported, batches)
    with torch.no_grad():
        reference = model(images)
    assert reference.std(dim=0).min() > 0  # the images give different logits: agreement means something
    assert [exported(b).shape for b in batches] == [torch.Size([1, 10]), torch.Size([7, 10])]
    print(f"\n{name} {fmt} fp32: max |diff| {result.max_abs_diff:.3g}, relative {result.max_rel_diff:.3g}")
    assert result.images == 8 and result.max_rel_diff <= 1e-4 and result.top1_agree == 8


def test_fp16_onnx_stays_within_its_tolerance_and_a_fixed_batch_is_fixed(real_images, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = build_model(ModelConfig(name="resnet9", num_classes=10, width=16)).eval()
    images = NORMALIZE(EvalPreprocess(32, 32).batch(real_images["cifar"]))
    path = tmp_path / "half.onnx"
    export_model(model, "onnx", path, images[:4], dynamic_batch=False, precision="fp16")
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 32, 32]
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    result = compare(model, load_exported(path, "onnx"), check_batches(images, 4))
    print(f"\nresnet9 onnx fp16: max |diff| {result.max_abs_diff:.3g}, relative {result.max_rel_diff:.3g}")
    assert 1e-6 < result.max_rel_diff <= TOLERANCE["fp16"]  # half precision really ran inside, within tolerance
    assert result.batch_sizes == [4, 4]


def test_check_batches_cover_a_lone_image_and_fixed_sizes():
    images = torch.arange(20.0).view(20, 1, 1, 1)
    assert [len(b) for b in check_batches(images, None)] == [1, 16, 3]
    assert [len(b) for b in check_batches(images, 8)] == [8, 8]
    assert [len(b) for b in check_batches(images[:3], 8)] == [8]
