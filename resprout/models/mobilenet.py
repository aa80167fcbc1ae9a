"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018), CIFAR-style.

Changes from the ImageNet network, for 32x32 inputs: the stem conv has stride 1 and the second stage (24 channels)
has stride 1 instead of 2, so the last feature map of a 32x32 input is 4x4 instead of 1x1. Everything else follows the
paper: inverted residual blocks (1x1 expand by 6, 3x3 depthwise, 1x1 linear projection), residual connections only
when the block keeps the shape, ReLU6, and a last 1x1 conv of ``1280 * max(1, width)`` channels (like the original,
the last conv is never narrowed below 1280). Module names follow torchvision (``features.N``, ``classifier.1``).
"""

from __future__ import annotations

import torch
from torch import nn

from resprout.models._common import check_probability, check_width, init_weights, scale_channels
from resprout.models.registry import register_model

# (expansion t, output channels c, repeats n, stride of the first block s); stage 2 has s=1 for CIFAR.
CIFAR_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class ConvBNReLU6(nn.Sequential):
    """conv (no bias) - BN - ReLU6, named ``0``, ``1``, ``2`` like torchvision's Conv2dNormActivation."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=False),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3) - linear projection (1x1, no activation), residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = int(round(cin * expansion))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            # Linear bottleneck: no activation after the projection (the paper's point about ReLU losing information).
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, *, width: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        channels = scale_channels(32, width)
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, channels, stride=1)]
        for t, c, n, s in CIFAR_SETTINGS:
            out = scale_channels(c, width)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        last = scale_channels(1280, max(1.0, width))
        layers.append(ConvBNReLU6(channels, last, kernel=1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


@register_model("mobilenetv2", options={"width": 1.0, "dropout": 0.0},
                description="MobileNetV2 (Sandler et al., CVPR 2018): inverted residual blocks with "
                            "depthwise convolutions")
def _build(*, in_channels: int, num_classes: int, width: float, dropout: float) -> nn.Module:
    return MobileNetV2(in_channels, num_classes, width=check_width(width), dropout=check_probability(dropout))
