"""DeviceNormalizer's fused CPU kernel against the formula it replaces, on every device the machine has."""

from __future__ import annotations

import pytest
import torch

from visiontrain.data.base import DeviceNormalizer

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _batch(layout: str, n: int = 3, h: int = 7, w: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(n * 100 + h * 10 + w)
    if layout == "strided":  # every other row of a taller batch: neither memory format
        return torch.randint(0, 256, (n, 3, 2 * h, w), dtype=torch.uint8, generator=generator)[:, :, ::2]
    images = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=generator)
    return images.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else images


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "strided"])
def test_normalized_batch_equals_the_formula_in_the_asked_memory_format(device, channels_last, layout):
    images = _batch(layout)
    out = DeviceNormalizer(MEAN, STD, device, channels_last)(images.to(device))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    assert out.device.type == device.type and out.dtype == torch.float32 and out.shape == images.shape
    assert torch.allclose(out.cpu(), expected, rtol=0, atol=1e-5)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=memory_format)
    # A channels-last result is not also contiguous NCHW here (odd sizes): the check above can fail.
    assert channels_last != out.is_contiguous()


@pytest.mark.parametrize("channels_last", [True, False])
def test_cpu_kernel_rounds_exactly_like_torchs_multiply_then_add(channels_last):
    normalize = DeviceNormalizer(MEAN, STD, torch.device("cpu"), channels_last)
    assert normalize.cpu is not None  # the kernel, not the torch fallback, is under test
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(2, 3, 1, 1)
    images = images.contiguous(memory_format=torch.channels_last)
    torch_result = images.contiguous(memory_format=normalize.memory_format).float()
    torch_result = torch_result.mul_(normalize.scale).add_(normalize.bias)
    assert torch.equal(normalize(images), torch_result)  # every uint8 value in every channel


def test_every_call_returns_new_memory_and_leaves_the_input_alone():
    normalize = DeviceNormalizer(MEAN, STD, torch.device("cpu"), channels_last=True)
    images = _batch("channels_last", n=4, h=32, w=32)
    before = images.clone()
    first, second = normalize(images), normalize(images)
    assert first.data_ptr() != second.data_ptr() and torch.equal(first, second)
    held = first.clone()
    normalize(images)
    assert torch.equal(first, held) and torch.equal(images, before)


def test_what_the_kernel_does_not_take_still_goes_through_the_formula():
    normalize = DeviceNormalizer(MEAN, STD, torch.device("cpu"), channels_last=True)
    floats = _batch("contiguous").float()
    assert torch.allclose(normalize(floats), floats * normalize.scale + normalize.bias, rtol=0, atol=1e-6)
    empty = normalize(torch.zeros(0, 3, 4, 4, dtype=torch.uint8))
    assert empty.shape == (0, 3, 4, 4) and empty.dtype == torch.float32
