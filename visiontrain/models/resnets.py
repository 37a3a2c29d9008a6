"""Residual networks: torchvision's ResNets (ImageNet stem), the CIFAR-stem ResNet-18 and ResNet-9.

- resnet18/34/50/101/152: torchvision's models, 7x7 stride-2 stem + max-pool.
- cifar_resnet18: the same BasicBlock network with a 3x3 stride-1 stem and no max-pool,
  as used for 32x32 inputs; parameter names match torchvision's resnet18.
- resnet9: the fast residual network of the DAWNBench CIFAR-10 entries (Myrtle.ai).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock, Bottleneck

from visiontrain.models.contract import ModelSettings, ModelSpec, depths_from_modules


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


def residual_branch_ends(model: nn.Module) -> list[nn.BatchNorm2d]:
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


def _resnet_stages(model: nn.Module, fine: bool) -> dict[str, int]:
    return depths_from_modules(model, [model.conv1, model.bn1], [model.layer1, model.layer2, model.layer3,
                                                                 model.layer4], ("fc",))


def _resnet9_stages(model: nn.Module, fine: bool) -> dict[str, int]:
    return depths_from_modules(model, [model.prep], [model.layer1, model.layer2, model.layer3], ("fc",))


def _torchvision_resnet(name: str) -> ModelSpec:
    def build(cfg: ModelSettings) -> nn.Module:
        return getattr(resnet, name)(weights=None, num_classes=cfg.num_classes)

    return ModelSpec(name, build, depths=_resnet_stages, input_size=224,
                     residual_branch_ends=residual_branch_ends)


SPECS = [
    *(_torchvision_resnet(name) for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")),
    ModelSpec("cifar_resnet18", lambda cfg: CifarResNet(BasicBlock, [2, 2, 2, 2], cfg.num_classes, cfg.width),
              depths=_resnet_stages, input_size=32, has_width=True,
              residual_branch_ends=residual_branch_ends),
    ModelSpec("resnet9", lambda cfg: ResNet9(cfg.num_classes, cfg.width), depths=_resnet9_stages,
              input_size=32, has_width=True, residual_branch_ends=residual_branch_ends),
]
