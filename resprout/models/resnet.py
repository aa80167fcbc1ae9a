"""Residual networks (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

Two families share one implementation:

* CIFAR-style ``resnet20/32/56/110``: a 3x3 stem with 16 channels, three stages of 16-32-64 channels with ``n``
  BasicBlocks each (depth = 6n+2).
* ImageNet-style ``resnet18/34`` (BasicBlock) and ``resnet50`` (Bottleneck, expansion 4): four stages of 64-128-256-512
  channels. Option ``stem`` picks ``"cifar"`` (3x3 conv, stride 1, no max-pool; the default, for small images) or
  ``"imagenet"`` (7x7 conv stride 2 and 3x3 max-pool stride 2, exactly torchvision's parameter count).

Shortcuts use **option B** of the paper everywhere: a 1x1 conv + BN projection when the shape changes, identity
otherwise. The paper used option A (zero-padded identity) for its CIFAR runs; projections are used here because they
are ordinary layers that channel surgery (pruning, slicing, widening) can follow, and they add only 2,752 parameters to
resnet20. Module names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``)
so state dicts look familiar; the Bottleneck uses the torchvision "v1.5" layout (stride on the 3x3 conv).
"""

from __future__ import annotations

import torch
from torch import nn

from resprout.models._common import check_choice, check_width, init_weights, scale_channels
from resprout.models.registry import register_model


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)  # no bias: BN follows


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection. Separate ReLU modules so each activation can be hooked."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, with a residual connection."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample
        self.relu3 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


STEMS = ("cifar", "imagenet")


class ResNet(nn.Module):
    """A ResNet with ``len(blocks)`` stages; stage ``i`` has ``blocks[i]`` blocks of ``widths[i]`` channels.

    The first stage keeps the resolution, every later stage halves it in its first block.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks: list[int],
        widths: list[int],
        in_channels: int,
        num_classes: int,
        *,
        stem: str = "cifar",
        width: float = 1.0,
    ) -> None:
        super().__init__()
        widths = [scale_channels(w, width) for w in widths]
        inplanes = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, inplanes, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = _conv3x3(in_channels, inplanes)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=False)
        # The CIFAR stem keeps full resolution; an Identity keeps the module names the same for both stems.
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        for i, (n, planes) in enumerate(zip(blocks, widths)):
            layer, inplanes = _make_layer(block, inplanes, planes, n, stride=1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", layer)
        self.num_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _make_layer(block, inplanes: int, planes: int, n: int, stride: int) -> tuple[nn.Sequential, int]:
    """A stage of ``n`` blocks; returns it and its output channels."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        # Option B: project the shortcut whenever the shape changes.
        downsample = nn.Sequential(_conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(out, planes) for _ in range(1, n)]
    return nn.Sequential(*layers), out


def _register_cifar(name: str, n: int) -> None:
    @register_model(name, options={"width": 1.0},
                    description=f"CIFAR ResNet-{6 * n + 2} (He et al., CVPR 2016): three stages of {n} basic blocks "
                                f"of 16, 32 and 64 channels")
    def build(*, in_channels: int, num_classes: int, width: float) -> nn.Module:
        return ResNet(BasicBlock, [n] * 3, [16, 32, 64], in_channels, num_classes, width=check_width(width))


def _register_imagenet(name: str, block, blocks: list[int]) -> None:
    kind = "basic" if block is BasicBlock else "bottleneck"

    @register_model(name, options={"width": 1.0, "stem": "cifar"},
                    description=f"ResNet-{name[6:]} (He et al., CVPR 2016): four stages of "
                                f"{', '.join(map(str, blocks))} {kind} blocks, 64 to 512 channels")
    def build(*, in_channels: int, num_classes: int, width: float, stem: str) -> nn.Module:
        return ResNet(
            block,
            blocks,
            [64, 128, 256, 512],
            in_channels,
            num_classes,
            stem=check_choice(stem, "stem", STEMS),
            width=check_width(width),
        )


for _name, _n in (("resnet20", 3), ("resnet32", 5), ("resnet56", 9), ("resnet110", 18)):
    _register_cifar(_name, _n)
_register_imagenet("resnet18", BasicBlock, [2, 2, 2, 2])
_register_imagenet("resnet34", BasicBlock, [3, 4, 6, 3])
_register_imagenet("resnet50", Bottleneck, [3, 4, 6, 3])
