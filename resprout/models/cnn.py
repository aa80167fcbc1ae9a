"""A small CNN with batch norm for quick experiments on tiny images (sklearn digits, MNIST, CIFAR)."""

from __future__ import annotations

import torch
from torch import nn

from resprout.models._common import check_width, init_weights, scale_channels
from resprout.models.registry import register_model


class SmallCNN(nn.Module):
    """conv3x3(32)-BN-ReLU, conv3x3(64)-BN-ReLU, maxpool 2, conv3x3(64)-BN-ReLU, global avg pool, linear.

    About 56.5k parameters at width 1 with 1 input channel and 10 classes. Every layer is its own named module so
    forward hooks can capture any stage.
    """

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c1, c2 = scale_channels(32, width), scale_channels(64, width)
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU(inplace=False)
        # ceil_mode keeps a 1x1 map at 1x1 instead of failing on very small inputs.
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.conv3 = nn.Conv2d(c2, c2, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c2)
        self.relu3 = nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.pool(x)
        x = self.relu3(self.bn3(self.conv3(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model("cnn", options={"width": 1.0}, description="small CNN for tiny images: three 3x3 conv-BN-ReLU "
                "layers, a max-pool, global average pooling and a linear classifier")
def _build_cnn(*, in_channels: int, num_classes: int, width: float) -> nn.Module:
    return SmallCNN(in_channels, num_classes, width=check_width(width))
