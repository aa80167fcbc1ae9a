"""Tests for resprout.models: registry, errors, shapes, parameter counts and surgery-friendliness."""

from __future__ import annotations

import copy
import importlib.util
import io
import math

import pytest
import torch
from torch import nn

from resprout.errors import ConfigError
from resprout.models import available_models, build_model, model_options, register_model, scale_channels
from resprout.models.external import INSTALL_HINT

BUILTIN = [
    "cnn",
    "densenet-bc",
    "densenet-bc-100",
    "mobilenetv2",
    "resnet110",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet50",
    "resnet56",
    "vgg11",
    "vgg16",
    "vgg19",
    "wrn",
    "wrn-16-4",
    "wrn-28-10",
    "wrn-40-2",
]

# Every built-in model with its defaults, plus the non-default structural variants.
VARIANTS = [(name, {}) for name in BUILTIN] + [
    ("resnet18", {"stem": "imagenet"}),
    ("resnet34", {"stem": "imagenet"}),
    ("resnet50", {"stem": "imagenet"}),
    ("vgg11", {"head": "gap"}),
    ("vgg16", {"head": "gap"}),
    ("vgg19", {"head": "gap"}),
]


def _ids(variant):
    name, options = variant
    return name + "".join(f"-{k}={v}" for k, v in options.items())


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_available_models_lists_every_builtin_sorted():
    names = available_models()
    assert names == sorted(names)
    assert set(BUILTIN) <= set(names)


def test_every_builtin_takes_width_defaulting_to_one():
    for name in BUILTIN:
        assert model_options(name)["width"] == 1.0, name


def test_model_options_returns_defaults_and_a_copy():
    assert model_options("resnet18") == {"width": 1.0, "stem": "cifar"}
    assert model_options("vgg16") == {"width": 1.0, "head": "fc"}
    assert model_options("densenet-bc") == {"depth": 100, "growth": 12, "width": 1.0}
    assert model_options("wrn") == {"depth": 16, "widen": 4, "width": 1.0, "dropout": 0.0}
    assert model_options("mobilenetv2") == {"width": 1.0, "dropout": 0.0}
    opts = model_options("resnet18")
    opts["stem"] = "imagenet"
    assert model_options("resnet18")["stem"] == "cifar"


@pytest.mark.parametrize("in_channels,num_classes", [(1, 10), (3, 100)])
@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_forward_shapes_and_backward(variant, in_channels, num_classes):
    name, options = variant
    torch.manual_seed(0)
    model = build_model(name, in_channels=in_channels, num_classes=num_classes, **options)
    if in_channels == 1:
        # MNIST-sized input: a shape check only, so run it without autograd.
        with torch.no_grad():
            assert model.eval()(torch.randn(1, 1, 28, 28)).shape == (1, num_classes)
    # Smallest input for the backward pass; batch of 2 because train-mode BN needs more than one value per channel
    # once the map is 1x1.
    size = 8 if in_channels == 1 else 32
    out = model.train()(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: no grad for {missing[:5]}"


@pytest.mark.parametrize(
    "name,options", [("cnn", {}), ("resnet18", {"stem": "imagenet"}), ("resnet50", {"stem": "imagenet"})]
)
def test_forward_224(name, options):
    model = build_model(name, in_channels=3, num_classes=10, **options).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 10)


PARAM_COUNTS = [
    ("resnet18", {"stem": "imagenet"}, 3, 1000, 11_689_512),  # torchvision resnet18
    ("resnet50", {"stem": "imagenet"}, 3, 1000, 25_557_032),  # torchvision resnet50
    ("resnet20", {}, 3, 10, 272_474),  # 269,722 with option A + 2,752 for the two projections
    ("resnet56", {}, 3, 10, 855_770),
    ("resnet18", {}, 3, 10, 11_173_962),
    ("resnet18", {"stem": "imagenet"}, 3, 10, 11_181_642),
    ("vgg16", {}, 3, 10, 14_724_042),
    ("vgg16", {"head": "gap"}, 3, 10, 14_724_042),  # 1x1 conv 512->10 has as many weights as Linear(512, 10)
    ("mobilenetv2", {}, 3, 10, 2_236_682),
    ("densenet-bc-100", {}, 3, 10, 769_162),
    ("densenet-bc", {"depth": 100, "growth": 12}, 3, 10, 769_162),
    ("wrn-16-4", {}, 3, 10, 2_748_890),
    ("wrn", {}, 3, 10, 2_748_890),
    ("wrn-28-10", {}, 3, 10, 36_479_194),
    ("wrn-40-2", {}, 3, 10, 2_243_546),
    ("cnn", {}, 1, 10, 56_554),
]


@pytest.mark.parametrize("name,options,in_channels,num_classes,expected", PARAM_COUNTS)
def test_parameter_counts(name, options, in_channels, num_classes, expected):
    model = build_model(name, in_channels=in_channels, num_classes=num_classes, **options)
    assert _count(model) == expected


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_torch_pruning_dependency_graph(variant):
    tp = pytest.importorskip("torch_pruning")
    name, options = variant
    model = build_model(name, in_channels=3, num_classes=10, **options).eval()
    example = torch.randn(1, 3, 32, 32)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c in dg.module2node for c in convs), "the tracer missed a conv"
    # Prune two output channels of a conv in the middle of the network and check the model still runs.
    group = dg.get_pruning_group(convs[len(convs) // 2], tp.prune_conv_out_channels, idxs=[0, 1])
    assert len(group) > 1  # at least the conv and what consumes its channels
    before = _count(model)
    group.prune()
    assert _count(model) < before
    with torch.no_grad():
        assert model(example).shape == (1, 10)


def test_densenet_concat_is_traced_by_torch_pruning():
    tp = pytest.importorskip("torch_pruning")
    model = build_model("densenet-bc", in_channels=3, num_classes=10, depth=40).eval()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32), verbose=False)
    concat_nodes = [node for node in dg.module2node.values() if "Concat" in type(node.module).__name__]
    n_layers = sum(type(m).__name__ == "DenseLayer" for m in model.modules())
    assert n_layers == 18  # (40 - 4) / 6 = 6 layers in each of 3 blocks
    assert len(concat_nodes) == n_layers


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_no_inplace_ops_and_no_conv_bias_before_bn(variant):
    name, options = variant
    model = build_model(name, in_channels=3, num_classes=10, **options)
    relus = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    assert relus
    inplace = [n for n, m in model.named_modules() if getattr(m, "inplace", False)]
    assert not inplace, f"{name}: in-place modules {inplace}"
    # Only the VGG gap classifier conv (not followed by BN) may have a bias.
    with_bias = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert with_bias == (["classifier.0"] if options.get("head") == "gap" else [])


def test_vgg_gap_head_has_no_linear_and_classifies_with_a_1x1_conv():
    gap = build_model("vgg16", in_channels=3, num_classes=7, head="gap")
    assert not any(isinstance(m, nn.Linear) for m in gap.modules())
    head = gap.classifier[0]
    assert isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1) and head.out_channels == 7
    fc = build_model("vgg16", in_channels=3, num_classes=7)
    linears = [m for m in fc.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 512


def test_vgg_ceil_mode_pools_keep_one_by_one_maps():
    model = build_model("vgg19", in_channels=1, num_classes=10).eval()
    with torch.no_grad():
        feats = model.features(torch.randn(1, 1, 8, 8))
    assert feats.shape == (1, 512, 1, 1)


def test_resnet_uses_torchvision_module_names():
    keys = set(build_model("resnet50", in_channels=3, num_classes=10, stem="imagenet").state_dict())
    for key in [
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv3.weight",
        "layer1.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
        "layer4.2.bn3.bias",
        "fc.weight",
        "fc.bias",
    ]:
        assert key in keys, key
    cifar = build_model("resnet20", in_channels=3, num_classes=10)
    names = dict(cifar.named_modules())
    assert "layer3.2.conv2" in names and "layer4" not in names
    assert cifar.layer1[0].downsample is None  # 16->16 at stride 1: identity shortcut
    assert isinstance(names["layer2.0.downsample.0"], nn.Conv2d)  # option B projection


def test_resnet_stems():
    cifar = build_model("resnet18", in_channels=3, num_classes=10)
    imagenet = build_model("resnet18", in_channels=3, num_classes=10, stem="imagenet")
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)


def test_width_multiplier_scales_channels():
    assert scale_channels(16, 0.5) == 8
    assert scale_channels(3, 0.1) == 1
    assert scale_channels(64, 1.5) == 96
    half = build_model("resnet20", in_channels=3, num_classes=10, width=0.5)
    assert half.conv1.out_channels == 8 and half.fc.in_features == 32
    double = build_model("cnn", in_channels=1, num_classes=10, width=2)
    assert double.conv3.out_channels == 128
    dense = build_model("densenet-bc", in_channels=3, num_classes=10, depth=40, width=2.0)
    assert dense.features.conv0.out_channels == 48  # 2 * growth, growth 12 -> 24
    assert build_model("wrn-16-4", in_channels=3, num_classes=10, width=0.5).fc.in_features == 128
    # MobileNetV2 never narrows its last conv below 1280, but widens it above.
    assert build_model("mobilenetv2", in_channels=3, num_classes=10, width=0.5).classifier[1].in_features == 1280
    assert build_model("mobilenetv2", in_channels=3, num_classes=10, width=2.0).classifier[1].in_features == 2560


def test_mobilenetv2_has_depthwise_convs_and_cifar_strides():
    model = build_model("mobilenetv2", in_channels=3, num_classes=10).eval()
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, 32, 32)).shape == (1, 1280, 4, 4)


def test_dropout_options_are_used():
    wrn = build_model("wrn-16-4", in_channels=3, num_classes=10, dropout=0.3)
    assert {m.p for m in wrn.modules() if isinstance(m, nn.Dropout)} == {0.3}
    mnv2 = build_model("mobilenetv2", in_channels=3, num_classes=10, dropout=0.2)
    assert mnv2.classifier[0].p == 0.2


def test_weight_init():
    torch.manual_seed(0)
    model = build_model("resnet56", in_channels=3, num_classes=10)
    conv = model.layer3[0].conv2  # 64x64x3x3
    expected_std = math.sqrt(2.0 / (conv.out_channels * 9))  # kaiming normal, fan_out, relu
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


@pytest.mark.parametrize("name", ["cnn", "resnet20", "densenet-bc-100", "mobilenetv2", "vgg11", "wrn-16-4"])
def test_deepcopy_and_whole_model_pickle(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        clone = copy.deepcopy(model)
        assert torch.equal(clone(x), ref)
        assert all(a is not b for a, b in zip(clone.parameters(), model.parameters()))
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert torch.equal(loaded(x), ref)


def test_forward_is_repeatable_with_hooks():
    # Forward hooks capture the real activations: no later in-place op may overwrite them.
    model = build_model("resnet20", in_channels=3, num_classes=10).eval()
    captured = []
    handle = model.layer1[0].relu1.register_forward_hook(lambda m, i, o: captured.append(o.clone()))
    handle2 = model.layer1[0].relu1.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
    finally:
        handle.remove()
        handle2.remove()
    assert torch.equal(captured[0], captured[1])


# --- errors -------------------------------------------------------------------------------------------------------


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_unknown_model_name():
    with pytest.raises(ConfigError) as exc_info:
        build_model("foo", in_channels=3, num_classes=10)
    message = _one_line(exc_info)
    assert "unknown model 'foo'" in message and "resnet20" in message and "cnn" in message
    with pytest.raises(ConfigError, match="unknown model 'bar'"):
        model_options("bar")


def test_unknown_option():
    with pytest.raises(ConfigError) as exc_info:
        build_model("resnet20", in_channels=3, num_classes=10, stem="imagenet")
    message = _one_line(exc_info)
    assert "resnet20" in message and "'stem'" in message and "width" in message


@pytest.mark.parametrize(
    "name,options,fragment",
    [
        ("resnet18", {"stem": "x"}, "'stem' must be one of 'cifar', 'imagenet'"),
        ("vgg16", {"head": "linear"}, "'head' must be one of 'fc', 'gap'"),
        ("cnn", {"width": 0}, "'width' must be a number > 0"),
        ("resnet20", {"width": -1.0}, "'width' must be a number > 0"),
        ("resnet20", {"width": "wide"}, "'width' must be a number > 0"),
        ("resnet20", {"width": True}, "'width' must be a number > 0"),
        ("wrn", {"depth": 15}, "'depth' must be an integer 6n+4"),
        ("wrn", {"widen": 0}, "'widen' must be an integer >= 1"),
        ("wrn-28-10", {"dropout": 1.5}, "'dropout' must be a number in [0, 1)"),
        ("densenet-bc", {"depth": 99}, "'depth' must be an integer 6n+4"),
        ("densenet-bc", {"growth": 2.5}, "'growth' must be an integer >= 1"),
    ],
)
def test_bad_option_values(name, options, fragment):
    with pytest.raises(ConfigError) as exc_info:
        build_model(name, in_channels=3, num_classes=10, **options)
    message = _one_line(exc_info)
    assert message.startswith(f"model '{name}': ")
    assert fragment in message


@pytest.mark.parametrize("kwargs,fragment", [({"in_channels": 0}, "in_channels"), ({"num_classes": -2}, "num_classes")])
def test_bad_channels_or_classes(kwargs, fragment):
    args = {"in_channels": 3, "num_classes": 10, **kwargs}
    with pytest.raises(ConfigError, match=fragment):
        build_model("cnn", **args)


@pytest.mark.parametrize("prefix,package", [("tv", "torchvision"), ("timm", "timm")])
def test_external_model_without_package(prefix, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(ConfigError) as exc_info:
        build_model(f"{prefix}:resnet18", in_channels=3, num_classes=10)
    assert _one_line(exc_info) == (
        f"model '{prefix}:resnet18' needs {package}, which is not installed beside torch {torch.__version__}; "
        f"{INSTALL_HINT}"
    )
    assert model_options(f"{prefix}:resnet18") == {}


def test_external_model_needs_a_name():
    with pytest.raises(ConfigError, match="needs a name after 'tv:'"):
        build_model("tv:", in_channels=3, num_classes=10)


# --- registering ----------------------------------------------------------------------------------------------------


def test_register_model():  # forgotten after the test (tests.conftest.scoped_registries)
    @register_model("tiny-linear", options={"hidden": 8})
    def build(*, in_channels, num_classes, hidden):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    assert "tiny-linear" in available_models()
    assert model_options("tiny-linear") == {"hidden": 8}
    model = build_model("tiny-linear", in_channels=1, num_classes=4, hidden=5)
    assert model[3].in_features == 5
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(ConfigError, match="unknown option 'width'"):
        build_model("tiny-linear", in_channels=1, num_classes=4, width=2.0)
    with pytest.raises(ConfigError, match="already registered"):
        register_model("tiny-linear", options={})
    with pytest.raises(ConfigError, match="must not contain ':'"):
        register_model("my:model", options={})

