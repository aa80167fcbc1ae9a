"""DenseNet-BC for CIFAR (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017).

A 3x3 stem conv with ``2 * growth`` channels, then three dense blocks of ``(depth - 4) / 6`` bottleneck layers
(BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k)), joined by transitions that halve the channels (compression 0.5) and the
resolution (BN-ReLU-conv1x1-avgpool 2), then BN-ReLU, global average pooling and a linear layer.
``densenet-bc-100`` is depth 100, growth 12 (about 0.77M parameters). The ``width`` option scales the growth rate.

Every dense layer concatenates its input and its new features with ``torch.cat`` in its own forward, so graph
tracers (torch-pruning) see each concat. Module names follow torchvision (``features.denseblock1.denselayer1.conv1``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from resprout.models._common import check_depth_6n4, check_int, check_width, init_weights, scale_channels
from resprout.models.registry import register_model


class DenseLayer(nn.Module):
    """Bottleneck layer: its output is ``cat([input, new_features])`` with ``growth`` new channels."""

    def __init__(self, cin: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(cin, bottleneck, 1, bias=False)  # no bias: norm2 follows
        self.norm2 = nn.BatchNorm2d(bottleneck)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(bottleneck, growth, 3, padding=1, bias=False)  # the next layer's norm1 follows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return torch.cat([x, new], 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            OrderedDict(
                norm=nn.BatchNorm2d(cin),
                relu=nn.ReLU(inplace=False),
                conv=nn.Conv2d(cin, cout, 1, bias=False),
                pool=nn.AvgPool2d(2),
            )
        )


class DenseNetBC(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, *, depth: int = 100, growth: int = 12, width: float = 1.0):
        super().__init__()
        growth = scale_channels(growth, width)
        n = (depth - 4) // 6
        channels = 2 * growth
        features: OrderedDict[str, nn.Module] = OrderedDict()
        # No bias: norm1 of the first dense layer follows.
        features["conv0"] = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        for b in range(1, 4):
            block = nn.Sequential()
            for i in range(1, n + 1):
                block.add_module(f"denselayer{i}", DenseLayer(channels, growth, 4 * growth))
                channels += growth
            features[f"denseblock{b}"] = block
            if b < 3:
                out = channels // 2  # compression 0.5
                features[f"transition{b}"] = Transition(channels, out)
                channels = out
        features["norm_final"] = nn.BatchNorm2d(channels)
        features["relu_final"] = nn.ReLU(inplace=False)
        self.features = nn.Sequential(features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


@register_model("densenet-bc", options={"depth": 100, "growth": 12, "width": 1.0},
                description="DenseNet-BC for 32x32 images (Huang et al., CVPR 2017): bottleneck dense "
                            "layers, transitions with compression 0.5")
def _build(*, in_channels: int, num_classes: int, depth: int, growth: int, width: float) -> nn.Module:
    return DenseNetBC(
        in_channels,
        num_classes,
        depth=check_depth_6n4(depth),
        growth=check_int(growth, "growth"),
        width=check_width(width),
    )


@register_model("densenet-bc-100", options={"width": 1.0},
                description="DenseNet-BC with depth 100 and growth rate 12 (the KE paper's DenseNet)")
def _build_100(*, in_channels: int, num_classes: int, width: float) -> nn.Module:
    return DenseNetBC(in_channels, num_classes, depth=100, growth=12, width=check_width(width))
