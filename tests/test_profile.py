"""Tests for resprout.surgery.profile: MAC and parameter counts against hand-computed values."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from resprout.errors import ConfigError
from resprout.models import build_model
from resprout.surgery import LayerCost, ModelProfile, profile_model


def _tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # bias kept on purpose: bias adds are not counted
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


def test_tiny_net_hand_computed():
    prof = profile_model(_tiny_net(), (1, 8, 8))
    conv = 4 * 8 * 8 * (1 * 3 * 3)  # out elements * in/groups * kernel = 2304
    bn = 4 * 8 * 8  # one per element = 256
    pool = 4 * 4 * 4 * (2 * 2)  # out elements * kernel elements = 256
    linear = 3 * 64 * 1  # out * in * rows = 192
    assert prof.by_type == {"conv": conv, "linear": linear, "bn": bn, "pool": pool, "other": 0}
    assert prof.macs == conv + bn + pool + linear == 3008
    assert prof.params == (36 + 4) + (4 + 4) + (64 * 3 + 3) == 243
    assert prof.trainable_params == prof.params
    assert prof.input_shape == (1, 8, 8)
    assert [(layer.name, layer.category) for layer in prof.layers] == [
        ("0", "conv"),
        ("1", "bn"),
        ("2", "other"),
        ("3", "pool"),
        ("4", "other"),
        ("5", "linear"),
    ]
    assert [layer.output_shape for layer in prof.layers] == [
        (1, 4, 8, 8),
        (1, 4, 8, 8),
        (1, 4, 8, 8),
        (1, 4, 4, 4),
        (1, 64),
        (1, 3),
    ]
    assert prof.layers[0] == LayerCost("0", "Conv2d", "conv", conv, 40, (1, 4, 8, 8))
    assert prof.layers[5].params == 195


def test_adaptive_pool_counts_input_elements():
    model = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    prof = profile_model(model, (2, 5, 5))
    assert prof.by_type["pool"] == 4 * 5 * 5
    assert prof.by_type["conv"] == 4 * 25 * 2
    assert prof.by_type["linear"] == 8


def test_grouped_and_depthwise_conv():
    grouped = profile_model(nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False), (8, 6, 6))
    assert grouped.macs == (16 * 6 * 6) * (8 // 4) * 9 == 10368
    assert grouped.params == 16 * 2 * 9
    depthwise = profile_model(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), (8, 6, 6))
    assert depthwise.macs == (8 * 6 * 6) * 1 * 9 == 2592


def test_strided_conv1d_and_transposed_conv():
    conv1d = profile_model(nn.Conv1d(2, 3, 5, stride=2), (2, 21))
    assert conv1d.macs == (3 * 9) * 2 * 5  # output length (21 - 5) // 2 + 1 = 9
    transposed = profile_model(nn.ConvTranspose2d(2, 3, 2, stride=2), (2, 4, 4))
    assert transposed.macs == (2 * 4 * 4) * 3 * 4  # input elements * out/groups * kernel
    assert transposed.layers[0].output_shape == (1, 3, 8, 8)


def test_linear_on_sequence_counts_every_row():
    prof = profile_model(nn.Sequential(nn.LayerNorm(5), nn.Linear(5, 7)), (4, 5))
    assert prof.by_type == {"conv": 0, "linear": 7 * 5 * 4, "bn": 20, "pool": 0, "other": 0}


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv(self.conv(x))


def test_module_called_twice_counts_twice():
    prof = profile_model(_Twice(), (3, 4, 4))
    once = 3 * 16 * 3 * 9
    assert prof.macs == 2 * once
    assert [layer.name for layer in prof.layers] == ["conv", "conv"]
    assert prof.params == 81  # but its weight only once


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6, bias=False)
        self.b = nn.Linear(6, 6, bias=False)
        self.b.weight = self.a.weight  # shared parameter

    def forward(self, x):
        return self.b(self.a(x))


def test_shared_parameters_counted_once_and_trainable_split():
    prof = profile_model(_Tied(), (6,))
    assert prof.params == 36
    assert prof.macs == 2 * 36
    model = _tiny_net()
    for p in model[0].parameters():
        p.requires_grad_(False)
    prof = profile_model(model, (1, 8, 8))
    assert prof.params == 243 and prof.trainable_params == 243 - 40


def test_resnet20_cifar():
    prof = profile_model(build_model("resnet20", in_channels=3, num_classes=10), (3, 32, 32))
    assert prof.params == 272_474
    conv_linear = prof.by_type["conv"] + prof.by_type["linear"]
    # 40.55M with option-A shortcuts + 2 x 131,072 for the two 1x1 projections (option B).
    assert conv_linear == 40_813_184
    assert 40.6e6 <= prof.macs <= 41.1e6  # adding BN (0.2M) and pooling


def test_resnet18_imagenet_matches_torchvision_count():
    model = build_model("resnet18", in_channels=3, num_classes=1000, stem="imagenet")
    prof = profile_model(model, (3, 224, 224))
    assert prof.params == 11_689_512
    assert prof.by_type["conv"] + prof.by_type["linear"] == 1_814_073_344
    assert prof.by_type["linear"] == 512 * 1000
    assert prof.by_type["pool"] == 64 * 56 * 56 * 9 + 512 * 7 * 7  # 3x3 max-pool + global avg pool


def test_profile_restores_modes_and_removes_hooks():
    model = build_model("cnn", in_channels=1, num_classes=10)
    model.train()
    model.bn2.eval()  # a mixed state, as when freezing one BN, must survive
    before = model.bn1.running_mean.clone()
    prof = profile_model(model, (1, 8, 8))
    assert prof.macs > 0
    assert model.training and model.bn1.training and not model.bn2.training
    assert torch.equal(model.bn1.running_mean, before)  # ran in eval mode: BN statistics untouched
    assert all(p.grad is None for p in model.parameters())  # ran under no_grad
    assert all(not m._forward_hooks for m in model.modules())

    model.eval()
    profile_model(model, (1, 8, 8))
    assert not any(m.training for m in model.modules())


def test_wrong_input_shape_is_a_config_error_and_cleans_up():
    model = build_model("resnet20", in_channels=3, num_classes=10).train()
    with pytest.raises(ConfigError) as exc_info:
        profile_model(model, (1, 32, 32))
    message = str(exc_info.value)
    assert "\n" not in message
    assert "(1, 32, 32)" in message and "ResNet" in message
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("bad", [(3, 0, 32), (), "3x32x32", (3, 32.0, 32), None])
def test_bad_input_shape_argument(bad):
    with pytest.raises(ConfigError, match="input_shape"):
        profile_model(_tiny_net(), bad)


def test_as_dict_is_json_friendly():
    prof = profile_model(_tiny_net(), (1, 8, 8))
    assert isinstance(prof, ModelProfile)
    data = json.loads(json.dumps(prof.as_dict()))
    assert data["macs"] == 3008 and data["params"] == 243
    assert data["input_shape"] == [1, 8, 8]
    assert data["by_type"]["conv"] == 2304
    assert data["layers"][3] == {
        "name": "3",
        "type": "MaxPool2d",
        "category": "pool",
        "macs": 256,
        "params": 0,
        "output_shape": [1, 4, 4, 4],
    }


def test_every_builtin_family_profiles_at_cifar_size():
    # Sanity across architectures: the counted conv MACs are positive and the totals add up.
    for name in ["cnn", "vgg11", "mobilenetv2", "densenet-bc-100", "wrn-16-4"]:
        prof = profile_model(build_model(name, in_channels=3, num_classes=10), (3, 32, 32))
        assert prof.by_type["conv"] > 0, name
        assert prof.macs == sum(prof.by_type.values()) == sum(layer.macs for layer in prof.layers)
