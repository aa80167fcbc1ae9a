"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k: a 3x3 stem with 16 channels, then three stages of ``(d - 4) / 6`` pre-activation wide basic blocks with
16k, 32k and 64k channels (strides 1, 2, 2), then BN-ReLU, global average pooling and a linear layer. A block is
BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3; when the shape changes the shortcut is a 1x1 conv on the pre-activated
input, as in the authors' code. ``wrn`` takes ``depth`` (default 16) and ``widen`` (default 4); ``wrn-16-4``,
``wrn-28-10`` and ``wrn-40-2`` are fixed aliases. ``width`` multiplies all channels on top of ``widen``.
"""

from __future__ import annotations

import torch
from torch import nn

from resprout.models._common import (
    check_depth_6n4,
    check_int,
    check_probability,
    check_width,
    init_weights,
    scale_channels,
)
from resprout.models.registry import register_model


class WideBasic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)  # no bias: bn2 follows
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=False)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)  # the next block's bn1 follows
        # Projection only when the shape changes; it reads the pre-activated input like the residual branch does.
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(act)))))
        identity = x if self.shortcut is None else self.shortcut(act)
        return out + identity


class WideResNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        depth: int = 16,
        widen: int = 4,
        width: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [scale_channels(c, width) for c in (16, 16 * widen, 32 * widen, 64 * widen)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        channels = widths[0]
        for i, (out, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = []
            for j in range(n):
                blocks.append(WideBasic(channels, out, stride if j == 0 else 1, dropout))
                channels = out
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = torch.flatten(self.avgpool(self.relu(self.bn(x))), 1)
        return self.fc(x)


@register_model("wrn", options={"depth": 16, "widen": 4, "width": 1.0, "dropout": 0.0},
                description="Wide ResNet WRN-depth-widen (Zagoruyko and Komodakis, BMVC 2016): "
                            "pre-activation blocks, widen times wider")
def _build(*, in_channels: int, num_classes: int, depth: int, widen: int, width: float, dropout: float) -> nn.Module:
    return WideResNet(
        in_channels,
        num_classes,
        depth=check_depth_6n4(depth),
        widen=check_int(widen, "widen"),
        width=check_width(width),
        dropout=check_probability(dropout),
    )


def _register_alias(depth: int, widen: int) -> None:
    @register_model(f"wrn-{depth}-{widen}", options={"width": 1.0, "dropout": 0.0},
                    description=f"Wide ResNet with depth {depth} and widening factor {widen} (Zagoruyko and "
                                f"Komodakis, BMVC 2016)")
    def build(*, in_channels: int, num_classes: int, width: float, dropout: float) -> nn.Module:
        return WideResNet(
            in_channels,
            num_classes,
            depth=depth,
            widen=widen,
            width=check_width(width),
            dropout=check_probability(dropout),
        )


for _depth, _widen in ((16, 4), (28, 10), (40, 2)):
    _register_alias(_depth, _widen)
