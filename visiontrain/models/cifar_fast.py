"""cifar_fast: a small wide convnet for reaching 94 % on CIFAR-10 in seconds (the design airbench and
hlb-CIFAR10 published): a frozen 2x2 patch-whitening first layer set from the training images, then three
conv-pool-BN-GELU groups and a max-pooled linear head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visiontrain.models.contract import ModelSpec, depths_from_modules


class PatchWhitening(nn.Conv2d):
    """A 2x2 convolution whose filters whiten the image's 2x2 patches (12 values each).

    `init_from_images` sets the filters to the eigenvectors of the patch covariance, each
    divided by the square root of its eigenvalue (and their negatives, so a following
    GELU passes both signs): the next layer sees decorrelated, unit-variance inputs,
    which lets a short schedule train fast. The filters stay frozen; the bias starts at 0 and trains
    (the fast recipe trains it for its first epochs only: optim.freeze_after_params).
    """

    def __init__(self, out_channels: int = 24):
        super().__init__(3, out_channels, kernel_size=2, padding=0, bias=True)
        if out_channels != 24:
            raise ValueError("PatchWhitening has 24 filters: 12 eigenvectors and their negatives")
        self.weight.requires_grad_(False)
        nn.init.zeros_(self.bias)  # whitened patches start centred as the data's are

    @torch.no_grad()
    def init_from_images(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """`images`: normalized N x 3 x H x W training images (any device and layout)."""
        total, outer, count = 0, 0, 0
        for chunk in images.split(256):  # float64 sums a chunk at a time: 5,000 images' patches at once is 0.5 GB
            patches = chunk.double().unfold(2, 2, 1).unfold(3, 2, 1)  # N, 3, H-1, W-1, 2, 2
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
            total, outer, count = total + patches.sum(0), outer + patches.T @ patches, count + len(patches)
        mean = total / count
        covariance = (outer - count * torch.outer(mean, mean)) / (count - 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).view(12, 3, 2, 2)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight))


def _conv_group(in_ch: int, out_ch: int) -> nn.Sequential:
    """conv -> 2x2 max-pool -> BN -> GELU -> conv -> BN -> GELU: pooling early halves the second conv's cost."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(out_ch),
        nn.GELU(),
        nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.GELU(),
    )


class CifarFast(nn.Module):
    """The fast CIFAR-10 network; widths (w, 4w, 4w) after the whitening layer (w = model.width)."""

    def __init__(self, num_classes: int, width: int = 64):
        super().__init__()
        self.whiten = PatchWhitening(24)
        self.layer1 = _conv_group(24, width)
        self.layer2 = _conv_group(width, 4 * width)
        self.layer3 = _conv_group(4 * width, 4 * width)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes, bias=False)
        # Small logits at the start, as ResNet-9's 1/8: the usual lr range then works.
        self.logit_scale = 1 / 9

    def init_from_data(self, images: torch.Tensor) -> None:
        """Data-dependent initialization from normalized training images (run.py calls it before training)."""
        self.whiten.init_from_images(images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(F.gelu(self.whiten(x)))))
        return self.fc(torch.flatten(self.pool(x), 1)) * self.logit_scale


def _stages(model: CifarFast, fine: bool) -> dict[str, int]:
    return depths_from_modules(model, [model.whiten], [model.layer1, model.layer2, model.layer3], ("fc",))


SPECS = [ModelSpec("cifar_fast", lambda cfg: CifarFast(cfg.num_classes, cfg.width), depths=_stages,
                   input_size=32, has_width=True)]
