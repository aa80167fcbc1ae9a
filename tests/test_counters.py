"""The field's own counters: MACs against torch's flop counter and the textbook formula, BN re-estimation against
``torch.optim.swa_utils.update_bn``, label smoothing against ``F.cross_entropy(label_smoothing=...)``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.flop_counter import FlopCounterMode

from resprout.methods.classification import smooth_cross_entropy, smooth_labels
from resprout.methods.evolution import reestimate_batchnorm
from resprout.models import available_models, build_model
from resprout.surgery.profile import FUNCTIONAL, profile_model

SHAPE = (3, 16, 16)


def torch_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """torch's own count of the whole forward (FLOPs / 2), on its own: no hooks of ours."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


def formula_macs(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(conv, linear) MACs of the model's Conv2d and Linear modules by the textbook formula, from forward hooks."""
    totals = {"conv": 0, "linear": 0}

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            totals["conv"] += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        else:
            totals["linear"] += m.out_features * m.in_features * (inputs[0].numel() // m.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return totals["conv"], totals["linear"]


@pytest.mark.parametrize("name", available_models())
def test_zoo_macs_are_torch_flop_counter_and_the_formula(name):
    options = {"depth": 40} if name == "densenet-bc" else {}
    model = build_model(name, in_channels=3, num_classes=10, width=0.125, **options)
    prof = profile_model(model, SHAPE)
    conv, linear = formula_macs(model, SHAPE)
    assert (prof.by_type["conv"], prof.by_type["linear"]) == (conv, linear)
    assert prof.by_type["conv"] + prof.by_type["linear"] == torch_macs(model, SHAPE)
    assert not [layer for layer in prof.layers if layer.name == FUNCTIONAL]  # every MAC is inside a layer


class WSConv(nn.Module):
    """Weight-standardized conv (Qiao et al. 2019) as many repositories write it: a plain module holding the weight
    and calling ``F.conv2d`` with the standardized copy."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, padding=1)


class WSConv2d(nn.Conv2d):
    """The same as a Conv2d subclass with its own forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class WSNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = WSConv(3, 32)
        self.c2 = WSConv2d(32, 64, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(8, 64)
        self.w3 = nn.Parameter(torch.randn(64, 64, 3, 3))  # used right in forward, outside any submodule
        self.fc = nn.Parameter(torch.randn(10, 64))

    def forward(self, x):
        x = F.relu(self.gn(self.c2(F.relu(self.c1(x)))))
        x = F.conv2d(x, self.w3, padding=1, stride=2)
        return x.mean(dim=(2, 3)) @ self.fc.t()  # a matmul instead of nn.Linear


def test_functional_convolutions_and_matmuls_are_counted():
    prof = profile_model(WSNet(), (3, 32, 32))
    c1 = 32 * 32 * 32 * (3 * 9)  # output elements * in * kernel
    c2 = 64 * 32 * 32 * (32 * 9)
    c3 = 64 * 16 * 16 * (64 * 9)
    fc = 10 * 64
    assert prof.by_type["conv"] == c1 + c2 + c3 == 29_196_288
    assert prof.by_type["linear"] == fc
    assert prof.by_type["conv"] + prof.by_type["linear"] == torch_macs(WSNet(), (3, 32, 32))
    by_name = {layer.name: layer for layer in prof.layers}
    assert (by_name["c1"].category, by_name["c1"].macs) == ("conv", c1)  # a plain module doing a conv
    assert by_name["c2"].macs == c2
    functional = [(layer.category, layer.macs) for layer in prof.layers if layer.name == FUNCTIONAL]
    assert sorted(functional) == [("conv", c3), ("linear", fc)]  # work outside every submodule, still counted
    assert prof.macs == sum(layer.macs for layer in prof.layers)


def test_parametrized_conv_is_counted_once():
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    nn.utils.parametrizations.weight_norm(conv)
    prof = profile_model(conv, (4, 6, 6))
    assert prof.by_type["conv"] == 8 * 36 * 4 * 9


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 3), nn.BatchNorm1d(3, momentum=0.3))


def test_bn_reestimation_equals_torch_update_bn():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(int(n), 3, 8, 8, generator=g) * 2 + 1 for n in (16, 16, 7)]  # unequal last batch
    mine, theirs = _bn_net(), _bn_net()
    for m in mine.modules():  # start from stale statistics, as a surgery leaves them
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.fill_(5.0)
    theirs.load_state_dict(mine.state_dict())
    mine.eval()
    theirs.eval()
    reestimate_batchnorm(mine, batches)
    update_bn(batches, theirs)
    for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-6, atol=1e-7), name
    assert not mine.training  # the mode is restored
    assert [m.momentum for m in mine.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] == [0.1, 0.1, 0.3]


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35, 1.0])
def test_label_smoothing_equals_torch_cross_entropy(eps):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(32, 7, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, 7, (32,), generator=g)
    expected = F.cross_entropy(logits, targets, label_smoothing=eps)
    assert torch.allclose(smooth_cross_entropy(logits, targets, eps), expected, rtol=1e-12, atol=1e-12)
    soft = smooth_labels(targets, 7, eps).double()
    assert torch.allclose(F.cross_entropy(logits, soft), expected, rtol=1e-6)


def test_label_smoothing_gradient_equals_torch():
    logits = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.arange(8) % 5
    ours = torch.autograd.grad(smooth_cross_entropy(logits, targets, 0.2), logits)[0]
    theirs = torch.autograd.grad(F.cross_entropy(logits, targets, label_smoothing=0.2), logits)[0]
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-14)
