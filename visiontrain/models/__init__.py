"""Model registry: torchvision ResNets (ImageNet stem) and CIFAR variants.

- resnet18/34/50/101/152: torchvision's models, 7x7 stride-2 stem + max-pool.
- cifar_resnet18: the same BasicBlock network with a 3x3 stride-1 stem and no max-pool,
  as used for 32x32 inputs; parameter names match torchvision's resnet18.
- resnet9: the fast residual network of the DAWNBench CIFAR-10 entries (Myrtle.ai).
- cifar_fast: a small wide convnet for reaching 94 % on CIFAR-10 in seconds (the design
  airbench and hlb-CIFAR10 published): a frozen 2x2 patch-whitening first layer set from
  the training images, then three conv-pool-BN-GELU groups and a max-pooled linear head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock, Bottleneck

if TYPE_CHECKING:  # config imports this module's registry to validate model.name
    from visiontrain.config import ModelConfig


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """x + f(x) with f two conv-bn-relu blocks (ResNet-9's residual unit)."""

    def __init__(self, channels: int):
        super().__init__()
        self.res1 = _conv_bn_relu(channels, channels)
        self.res2 = _conv_bn_relu(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


class ResNet9(nn.Module):
    def __init__(self, num_classes: int, width: int = 64):
        super().__init__()
        w = width
        self.prep = _conv_bn_relu(3, w)
        self.layer1 = nn.Sequential(_conv_bn_relu(w, 2 * w), nn.MaxPool2d(2), Residual(2 * w))
        self.layer2 = nn.Sequential(_conv_bn_relu(2 * w, 4 * w), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(_conv_bn_relu(4 * w, 8 * w), nn.MaxPool2d(2), Residual(8 * w))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(8 * w, num_classes, bias=False)
        # The DAWNBench network scales its logits by 1/8; it lets the usual lr range work.
        self.logit_scale = 0.125

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(torch.flatten(self.pool(x), 1)) * self.logit_scale


class CifarResNet(nn.Module):
    """torchvision's ResNet body with a 3x3 stride-1 stem and no max-pool."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int, width: int = 64):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class PatchWhitening(nn.Conv2d):
    """A 2x2 convolution whose filters whiten the image's 2x2 patches (12 values each).

    `init_from_images` sets the filters to the eigenvectors of the patch covariance, each
    divided by the square root of its eigenvalue (and their negatives, so a following
    GELU passes both signs): the next layer sees decorrelated, unit-variance inputs,
    which lets a short schedule train fast. The filters stay frozen; the bias trains.
    """

    def __init__(self, out_channels: int = 24):
        super().__init__(3, out_channels, kernel_size=2, padding=0, bias=True)
        if out_channels != 24:
            raise ValueError("PatchWhitening has 24 filters: 12 eigenvectors and their negatives")
        self.weight.requires_grad_(False)

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


def _torchvision(name: str) -> Callable[[ModelConfig], nn.Module]:
    def build(cfg: ModelConfig) -> nn.Module:
        return getattr(resnet, name)(weights=None, num_classes=cfg.num_classes)

    return build


_BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    **{name: _torchvision(name) for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")},
    "cifar_resnet18": lambda cfg: CifarResNet(BasicBlock, [2, 2, 2, 2], cfg.num_classes, cfg.width),
    "resnet9": lambda cfg: ResNet9(cfg.num_classes, cfg.width),
    "cifar_fast": lambda cfg: CifarFast(cfg.num_classes, cfg.width),
}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)
CIFAR_MODEL_NAMES: tuple[str, ...] = ("cifar_resnet18", "resnet9", "cifar_fast")
HEAD = "fc"  # every model's classifier: the part fine-tuning replaces and optim.backbone_lr_mult spares


def stem_and_stages(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(stem modules, residual stages in input-to-output order): what finetune.freeze=stages:K counts."""
    if isinstance(model, ResNet9):
        return [model.prep], [model.layer1, model.layer2, model.layer3]
    if isinstance(model, CifarFast):
        return [model.whiten], [model.layer1, model.layer2, model.layer3]
    return [model.conv1, model.bn1], [model.layer1, model.layer2, model.layer3, model.layer4]


def last_bn_of_residual_branches(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The BatchNorm whose output is added to the skip connection, one per residual block."""
    found = []
    for module in model.modules():
        if isinstance(module, Bottleneck):
            found.append(module.bn3)
        elif isinstance(module, BasicBlock):
            found.append(module.bn2)
        elif isinstance(module, Residual):
            found.append(module.res2[1])
    return found


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model (no compile, no memory-format change, on the CPU)."""
    model = _BUILDERS[cfg.name](cfg)
    if cfg.zero_init_residual:
        # Each residual block starts as the identity: trains deep nets stably at large batch.
        for bn in last_bn_of_residual_branches(model):
            nn.init.zeros_(bn.weight)
    return model
