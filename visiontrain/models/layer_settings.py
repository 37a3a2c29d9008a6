"""Settings that apply to every layer of a kind, whatever the architecture: BatchNorm's running-statistics
momentum, epsilon and frozen scale, and the dirac (identity) start of convolutions (`model.bn_*`,
`model.conv_init`). `build_model` applies them after the architecture's own initialization.

A timm or torchvision architecture keeps its own BatchNorm momentum and epsilon (timm's `tf_*` ports use
epsilon 1e-3, which their published weights need) unless the config sets another value than PyTorch's.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class LayerSettings(Protocol):
    bn_momentum: float
    bn_eps: float
    bn_scale: str
    conv_init: str


TORCH_BN_MOMENTUM, TORCH_BN_EPS = 0.1, 1e-5


def apply_layer_settings(model: nn.Module, cfg: LayerSettings, keeps_own_bn: bool = False) -> None:
    """`keeps_own_bn`: momentum and epsilon are changed only where the config sets another value than PyTorch's."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            if not keeps_own_bn or cfg.bn_momentum != TORCH_BN_MOMENTUM:
                module.momentum = cfg.bn_momentum
            if not keeps_own_bn or cfg.bn_eps != TORCH_BN_EPS:
                module.eps = cfg.bn_eps
            if cfg.bn_scale == "frozen" and module.weight is not None:
                # Scale 1, not trained: the following layer sees unit-variance features and the
                # shift alone adapts (with optim.norm_bias_lr_mult it may take large steps).
                with torch.no_grad():
                    module.weight.fill_(1.0)
                module.weight.requires_grad_(False)
        elif isinstance(module, nn.Conv2d) and cfg.conv_init == "dirac" and _has_center(module):
            with torch.no_grad():
                # The first min(in, out) filters pass their input channel through unchanged.
                nn.init.dirac_(module.weight[: module.in_channels])


def _has_center(conv: nn.Conv2d) -> bool:
    """An odd square kernel (a centre tap to put the identity on), no groups, trainable weights."""
    height, width = conv.kernel_size
    return height == width and height % 2 == 1 and conv.groups == 1 and conv.weight.requires_grad
