import pytest
import torch
from torch import nn

from visiontrain.evaluate.tta import TTA_MODES, tta_logits, views


class Probe(nn.Module):
    """Logits that see where the pixels are: a linear map of the flattened image."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_flip_tta_on_a_mirror_symmetric_image_equals_no_tta():
    half = torch.randn(4, 3, 8, 4)
    symmetric = torch.cat([half, half.flip(3)], dim=3)
    model = Probe()
    assert torch.allclose(tta_logits(model, symmetric, "flip"), tta_logits(model, symmetric, "none"), atol=1e-6)
    asymmetric = torch.randn(4, 3, 8, 8)
    assert not torch.allclose(tta_logits(model, asymmetric, "flip"), tta_logits(model, asymmetric, "none"),
                              atol=1e-3)


def test_flip_tta_is_the_mean_of_the_image_and_its_mirror():
    model, images = Probe(), torch.randn(2, 3, 8, 8)
    expected = (model(images) + model(images.flip(3))) / 2
    assert torch.allclose(tta_logits(model, images, "flip"), expected, atol=1e-6)


def test_flip_translate_views_are_one_pixel_shifts_with_reflected_borders():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    weighted = views(images.contiguous(memory_format=torch.channels_last), "flip_translate")
    assert len(weighted) == 6 and sum(w for w, _ in weighted) == pytest.approx(1.0)
    assert [w for w, _ in weighted] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    down_right, up_left = weighted[2][1], weighted[4][1]
    assert torch.equal(down_right[..., 1:, 1:], images[..., :-1, :-1])  # moved by one pixel down and right
    assert torch.equal(down_right[..., 0, 1:], images[..., 1, :-1])  # the top row reflects row 1
    assert torch.equal(up_left[..., :-1, :-1], images[..., 1:, 1:])
    assert all(view.is_contiguous(memory_format=torch.channels_last) for _, view in weighted)
    assert torch.equal(weighted[3][1], down_right.flip(3))
    # A constant image is the same in every view: its logits do not change.
    model, flat = Probe(), torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(tta_logits(model, flat, "flip_translate"), model(flat), atol=1e-6)


def test_unknown_mode_is_refused():
    assert TTA_MODES == ("none", "flip", "flip_translate")
    with pytest.raises(ValueError, match="flip_translate"):
        views(torch.zeros(1, 3, 4, 4), "rotate")


def test_config_takes_the_tta_modes_and_names_them_when_refusing():
    from visiontrain.config import load_config
    from visiontrain.infra.errors import UsageError

    assert load_config(None, ["train.tta=flip_translate"]).train.tta == "flip_translate"
    with pytest.raises(UsageError, match="train.tta.*rotate.*none, flip, flip_translate"):
        load_config(None, ["train.tta=rotate"])


def test_alternating_flips_without_flips_are_refused():
    from visiontrain.config import load_config
    from visiontrain.infra.errors import UsageError

    with pytest.raises(UsageError, match="data.alternate_flip.*data.flip=true"):
        load_config(None, ["data.flip=false", "data.alternate_flip=true"])
