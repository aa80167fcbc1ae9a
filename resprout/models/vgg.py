"""VGG with batch norm (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015), CIFAR-style: configurations A (``vgg11``), D (``vgg16``) and E (``vgg19``) of 3x3 conv-BN-ReLU layers.

Option ``head``:

* ``"fc"`` (default): global average pooling over the last feature map, then one ``Linear(512*width, classes)``
  instead of the paper's three large FC layers, as is usual for 32x32 inputs.
* ``"gap"``: the CIFAR variant of Neural Rejuvenation (Qiao et al., "Neural Rejuvenation: Improving Deep Network
  Training by Enhancing Computational Resource Utilization", CVPR 2019): a 1x1 conv to ``num_classes`` on the last
  feature map, then global average pooling. There is no linear layer.

Max-pools use ``ceil_mode=True`` so a 1x1 map stays 1x1 and inputs as small as 8x8 pass all five pools.
"""

from __future__ import annotations

import torch
from torch import nn

from resprout.models._common import check_choice, check_width, init_weights, scale_channels
from resprout.models.registry import register_model

CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
HEADS = ("fc", "gap")


class VGG(nn.Module):
    """``features`` (the conv stack) followed by ``classifier`` (pooling and the class layer, per ``head``)."""

    def __init__(self, config: str, in_channels: int, num_classes: int, *, head: str = "fc", width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in CONFIGS[config]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                out = scale_channels(int(item), width)
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
        self.features = nn.Sequential(*layers)
        if head == "gap":
            # Class scores are computed per position, then averaged (Qiao et al. 2019); the conv keeps its bias
            # because no BN follows it.
            self.classifier = nn.Sequential(
                nn.Conv2d(channels, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
            )
        else:
            self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(channels, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _register(name: str, config: str) -> None:
    @register_model(name, options={"width": 1.0, "head": "fc"},
                    description=f"VGG-{name[3:]} with batch normalization (Simonyan and Zisserman, ICLR 2015): a "
                                f"stack of 3x3 convs and max-pools, then the classifier head")
    def build(*, in_channels: int, num_classes: int, width: float, head: str) -> nn.Module:
        return VGG(config, in_channels, num_classes, head=check_choice(head, "head", HEADS), width=check_width(width))


_register("vgg11", "A")
_register("vgg16", "D")
_register("vgg19", "E")
