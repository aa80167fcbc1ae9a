"""Small stand-ins for real models that torchvision would build (torchvision does not import beside this CPU torch):
the blocks that decide how channel surgery treats them, at widths a test runs in milliseconds. Used by
tests/test_evolution_models.py, tests/test_resize.py and tests/test_channel_coupling.py.

* :class:`GroupedNet`: a stem and two bottleneck blocks 1x1 -> grouped 3x3 -> [squeeze-excitation] -> 1x1 with a
  residual add (projection shortcut in the first block, identity in the second): ResNeXt (Xie et al. 2017, Fig. 3c;
  ``groups`` = cardinality), RegNetX (Radosavovic et al. 2020; ``groups`` = width / group width), RegNetY (the same
  with squeeze-excitation on the grouped conv's output), and with ``groups == width`` the depthwise variant.
* :class:`MNISTNet`: the structure of PyTorch's MNIST example (conv, conv, max-pool, dropout, flatten, fc, dropout,
  fc, ``log_softmax`` over the classes).
* :class:`FlatNet`: a ``Conv{1,2,3}d`` stack flattened into a Linear layer (one flatten rule for every dimension).
* :class:`ShuffleUnit`: a ShuffleNet V2 down-sampling unit (Ma et al. 2018, Fig. 3d) ending in a channel shuffle
  (view, transpose, view).
* :class:`ConvNeXtBlock`: a ConvNeXt stem and block (Liu et al. 2022): LayerNorm over the channels through a permute to
  channels-last, Linear layers over the channels, layer scale, residual add.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SqueezeExcitation(nn.Module):
    """``x * sigmoid(fc2(relu(fc1(mean(x)))))`` with 1x1 convolutions (RegNetY's SE)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, groups: int, stride: int, squeeze: int | None) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.se = SqueezeExcitation(width, squeeze) if squeeze else nn.Identity()
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.se(F.relu(self.bn2(self.conv2(h))))
        return F.relu(self.bn3(self.conv3(h)) + self.shortcut(x))


class GroupedNet(nn.Module):
    """stem (``in_channels`` -> ``stem``) -> Bottleneck(``stem`` -> ``width`` -> ``out``, stride 2) ->
    Bottleneck(``out`` -> ``width`` -> ``out``) -> pool -> fc; ``squeeze``: the SE widths of the two blocks (None:
    no SE)."""

    def __init__(self, groups: int, width: int, squeeze: tuple[int, int] | None = None, stem: int = 16,
                 out: int = 48, in_channels: int = 3, classes: int = 10) -> None:
        super().__init__()
        se1, se2 = squeeze or (None, None)
        self.stem, self.bn = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem)
        self.block1 = Bottleneck(stem, width, out, groups, 2, se1)
        self.block2 = Bottleneck(out, width, out, groups, 1, se2)
        self.fc = nn.Linear(out, classes)

    def forward(self, x):
        x = self.block2(self.block1(F.relu(self.bn(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


#: name -> keyword arguments of :class:`GroupedNet`
GROUPED = {
    "resnext": {"groups": 8, "width": 32},  # cardinality 8, 4 channels per group
    "regnetx": {"groups": 3, "width": 48},  # group width 16
    "regnety": {"groups": 3, "width": 48, "squeeze": (4, 12)},  # SE width: a quarter of the block's input width
    "depthwise": {"groups": 32, "width": 32},  # groups == channels
}


class MNISTNet(nn.Module):
    """The layers of PyTorch's MNIST example, for 1x12x12 inputs (the flatten reads a 64 x 4 x 4 map)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(64 * 4 * 4, 128), nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.relu(self.fc1(torch.flatten(self.dropout1(x), 1)))
        return F.log_softmax(self.fc2(self.dropout2(x)), dim=1)


class FlatNet(nn.Module):
    """``Conv{d}d`` (4 -> 16, BN) -> ``Conv{d}d`` (16 -> 24) -> max-pool -> flatten -> Linear -> Linear, for inputs
    of side 8 in every spatial dim (the flatten reads a 24 x 2^d map)."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        conv, bn = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d),
                    3: (nn.Conv3d, nn.BatchNorm3d)}[dims]
        self.dims = dims
        self.conv1, self.bn1 = conv(4, 16, 3), bn(16)
        self.conv2 = conv(16, 24, 3)
        self.fc1, self.fc2 = nn.Linear(24 * 2 ** dims, 32), nn.Linear(32, 6)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        x = getattr(F, f"max_pool{self.dims}d")(x, 2)
        return self.fc2(F.relu(self.fc1(x.view(x.shape[0], -1))))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """stem -> [branch1: depthwise 3x3/2, 1x1 | branch2: 1x1, depthwise 3x3/2, 1x1] -> concatenation -> channel
    shuffle -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.branch1 = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False), nn.BatchNorm2d(16),
                                     nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.branch2 = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                     nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False), nn.BatchNorm2d(16),
                                     nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = channel_shuffle(torch.cat([self.branch1(x), self.branch2(x)], 1), 2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map, through channels-last (as torchvision's ConvNeXt)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """patchify stem (4x4/4, LayerNorm2d) -> depthwise 7x7 -> channels-last LayerNorm, Linear 4x, GELU, Linear ->
    layer scale -> residual add -> pool -> fc."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 4, 4), LayerNorm2d(dim))
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm, self.pw1, self.pw2 = nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.fc = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.stem(x)
        h = self.pw2(F.gelu(self.pw1(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))))
        x = x + (self.gamma * h).permute(0, 3, 1, 2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
