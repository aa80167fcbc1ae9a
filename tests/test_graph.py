"""Tests for resprout.surgery.graph: the tracer refuses when in doubt (allowlisted elementwise calls only, computed
weights refused, constant chunks of a concatenation recorded and never cut)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from resprout.errors import ConfigError
from resprout.models import available_models, build_model
from resprout.surgery.channels import channel_groups, check_traceable
from resprout.surgery.graph import trace

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class _Between(nn.Module):
    """conv1 -> ``fn`` -> conv2 -> global pool -> fc: conv1's channels are free unless ``fn`` mixes them."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.fn(torch.relu(self.conv1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.conv2(x), 1), 1))


def _kinds(fn) -> list[tuple[str, str]]:
    """(kind, name) of the calls between conv1 (and its relu) and conv2."""
    ops = trace(_Between(fn), X).ops
    conv2 = next(op.index for op in ops if op.module == "conv2")
    return [(op.kind, op.name) for op in ops[2:conv2]]


# -- calls that mix channels are opaque and refused -------------------------------------------------------------------


@pytest.mark.parametrize("fn, kind, name", [
    # normalizations over the channels that keep them in place: "mix", refused unless they are the output classes
    (lambda x: F.softmax(x, dim=1), "mix", "softmax"),
    (lambda x: x.softmax(1), "mix", "softmax"),
    (lambda x: torch.log_softmax(x, dim=-3), "mix", "log_softmax"),
    (lambda x: F.softmax(x), "mix", "softmax"),  # implicit dim of a 4-d tensor is 1
    (lambda x: F.normalize(x), "mix", "normalize"),  # dim=1 by default
    (nn.LocalResponseNorm(2), "opaque", "local_response_norm"),
    (lambda x: torch.cumsum(x, 1), "opaque", "cumsum"),
    (lambda x: x.cumprod(dim=1), "opaque", "cumprod"),
    (lambda x: x - x.mean(1, keepdim=True), "opaque", "mean"),
    (lambda x: x / x.norm(dim=1, keepdim=True), "opaque", "norm"),
    (lambda x: x - x.sum(dim=(1, 2), keepdim=True), "opaque", "sum"),
    (lambda x: torch.flip(x, [1]), "opaque", "flip"),
])
@pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmax")
def test_calls_mixing_channels_are_refused_between_layers(fn, kind, name):
    assert (kind, name) in _kinds(fn)
    with pytest.raises(ConfigError, match=f"cannot cut channel group 'conv1'.*'{name}'"):
        check_traceable(_Between(fn), X)


class _Head(nn.Module):
    """conv -> pool -> fc -> ``fn``: ``fn`` works on the network's output classes."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn, self.conv, self.fc = fn, nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)

    def forward(self, x):
        return self.fn(self.fc(torch.flatten(F.adaptive_avg_pool2d(self.conv(x), 1), 1)))


@pytest.mark.parametrize("fn", [lambda x: F.log_softmax(x, dim=1), lambda x: x.softmax(-1),
                                lambda x: F.normalize(x) * 2, lambda x: torch.log_softmax(x, 1).clamp(min=-30)])
def test_a_softmax_or_normalization_over_the_output_classes_is_accepted(fn):
    graph = check_traceable(_Head(fn), X)
    groups = channel_groups(graph)
    assert groups["output"].writers == ["fc"] and groups["conv"].resizable  # fc writes the classes, kept whole
    assert [op.kind for op in graph.ops if op.index > next(o.index for o in graph.ops if o.module == "fc")][0] == "mix"


@pytest.mark.parametrize("fn, why", [
    (lambda x: torch.cat(x.chunk(2, dim=1)[::-1], 1), "which splits or selects the channels"),
    (lambda x: x - x.mean(1, keepdim=True), "which mixes the channels"),
    (lambda x: x * torch.randn(8, 1, 1), "which combines them with a constant or parameter that has one value per "
                                         "channel"),
    (lambda x: x.transpose(1, 3).transpose(1, 3), "which moves the channels away from dim 1"),
    (lambda x: x.reshape(2, 2, 4, 8, 8).transpose(1, 2).reshape(2, 8, 8, 8),
     "which splits the channels into several dims (as a channel shuffle does)"),
    (lambda x: F.softmax(x, dim=0), "which resize cannot follow"),  # over the batch: opaque, nothing more to say
])
def test_the_refusal_says_what_the_call_does_to_the_channels(fn, why):
    with pytest.raises(ConfigError) as e:
        check_traceable(_Between(fn), X)
    assert "channel surgery cannot cut channel group 'conv1': it flows into '" in str(e.value)
    assert f", {why}" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("fn", [
    lambda x: x.softmax(-1),
    lambda x: F.softmax(x, dim=2),
    lambda x: x - x.mean((2, 3), keepdim=True),
    lambda x: x * x.amax(dim=(-1, -2), keepdim=True).sigmoid(),
    lambda x: x + x.max(dim=3, keepdim=True)[0],
    lambda x: F.normalize(x, dim=3),
    lambda x: torch.cumsum(x, dim=2),
    lambda x: F.gelu(F.silu(F.hardswish(F.leaky_relu(torch.tanh(x))))),
    lambda x: F.dropout2d(F.max_pool2d(F.avg_pool2d(x, 1), 1)),
    lambda x: F.interpolate(F.adaptive_max_pool2d(x, 4), size=(8, 8)),
    lambda x: F.pad(x, (1, 1, 1, 1))[:, :, 1:-1, 1:-1],
    lambda x: torch.cat([x[:, :, :4], x[:, :, 4:]], dim=2),
    lambda x: torch.where(x > 0, x, x * 0.1).clamp(-1, 1).contiguous().float(),
    lambda x: x.clone().mul_(2).add_(1),
    nn.PReLU(),  # a single weight
])
def test_channel_independent_calls_are_elementwise(fn):
    kinds = _kinds(fn)
    assert kinds and all(kind == "elementwise" for kind, _ in kinds), kinds
    check_traceable(_Between(fn), X)


@pytest.mark.parametrize("fn, name", [
    (nn.PReLU(8), "prelu"),  # one weight per channel: resize would not cut it
    (lambda x: x.permute(0, 1, 3, 2).roll(1, 1), "roll"),
    (lambda x: torch.erfinv(x.tanh() * 0.5), "erfinv"),  # not on the allowlist
    (lambda x: F.pad(x, (0, 0, 0, 0, 1, -1)), "pad"),  # shifts the channels
])
def test_unknown_or_per_channel_calls_are_opaque(fn, name):
    assert ("opaque", name) in _kinds(fn)


def test_per_channel_constant_operand_is_opaque_a_broadcast_one_is_not():
    gamma = torch.randn(8, 1, 1)
    assert ("opaque", "mul") in _kinds(lambda x: x * gamma)
    assert _kinds(lambda x: x * torch.tensor(2.0)) == [("elementwise", "mul")]
    assert _kinds(lambda x: x * torch.ones(1, 1, 8, 1)) == [("elementwise", "mul")]  # broadcast along channels


def test_setitem_on_channels_is_opaque_on_spatial_dims_is_elementwise():
    def channels(x):
        x = x.clone()
        x[:, 0] = 0
        return x

    def spatial(x):
        x = x.clone()
        x[:, :, 0] = 0
        return x

    assert ("opaque", "__setitem__") in _kinds(channels)
    assert _kinds(spatial) == [("elementwise", "clone"), ("elementwise", "__setitem__")]


# -- weights computed in the forward pass -----------------------------------------------------------------------------


class _Double(nn.Module):
    def forward(self, w):
        return 2 * w


def _conv_net(wrap) -> nn.Module:
    net = _Between(nn.Identity())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old-style weight_norm / spectral_norm are deprecated
        wrap(net)
    return net


@pytest.mark.parametrize("wrap, why", [
    (lambda n: torch.nn.utils.weight_norm(n.conv1), "weight_norm, old style"),
    (lambda n: torch.nn.utils.weight_norm(n.conv2), "weight_norm, old style"),
    (lambda n: torch.nn.utils.spectral_norm(n.conv1), "spectral_norm, old style"),
    (lambda n: torch.nn.utils.parametrizations.weight_norm(n.conv1), "parametrization weight_norm"),
    (lambda n: torch.nn.utils.parametrizations.spectral_norm(n.fc), "parametrization spectral_norm"),
    (lambda n: parametrize.register_parametrization(n.conv1, "weight", _Double()), "parametrization _Double"),
])
def test_parametrized_weights_are_refused_naming_the_module(wrap, why):
    net = _conv_net(wrap)
    layer = next(p for p, m in net.named_modules() if p in ("conv1", "conv2", "fc") and
                 (parametrize.is_parametrized(m) or m._forward_pre_hooks))
    for call in (trace, check_traceable):
        with pytest.raises(ConfigError, match=rf"layer '{layer}' computes its weight in the forward pass "
                                              rf"\({why}.*\); channel surgery cannot follow it"):
            call(net, X)


def test_old_style_weight_norm_without_bias_is_named_by_its_forward():
    net = _Between(nn.Identity())
    net.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.nn.utils.weight_norm(net.conv1)
    with pytest.raises(ConfigError, match="layer 'conv1' computes its weight.*weight_norm"):
        trace(net, X)


class _FunctionalConv(nn.Module):
    def __init__(self, from_input: bool = False) -> None:
        super().__init__()
        self.from_input = from_input
        self.w = nn.Parameter(torch.randn(8, 3, 3, 3))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        w = self.w * 2 if not self.from_input else x[:1].mean() * self.w
        return self.head(F.conv2d(x, w, padding=1).mean((2, 3)))


class _Wrapper(nn.Module):
    def __init__(self, inner) -> None:
        super().__init__()
        self.block = inner

    def forward(self, x):
        return self.block(x)


@pytest.mark.parametrize("from_input, why", [(False, "not a parameter of any module"),
                                             (True, "computed from the input")])
def test_functional_conv_with_a_computed_weight_is_refused(from_input, why):
    with pytest.raises(ConfigError, match=f"layer 'block' computes its weight in the forward pass \\(conv2d with a "
                                          f"weight that is {why}\\)"):
        trace(_Wrapper(_FunctionalConv(from_input)), X)
    with pytest.raises(ConfigError, match="layer '_FunctionalConv' computes its weight"):
        check_traceable(_FunctionalConv(from_input), X)


def test_non_strict_trace_records_a_computed_weight_as_opaque():
    net = _conv_net(lambda n: torch.nn.utils.parametrizations.weight_norm(n.conv1))
    graph = trace(net, X, strict=False)
    conv1 = next(op for op in graph.ops if op.name == "conv2d" and op.module == "conv1")
    assert conv1.kind == "opaque" and "weight_norm" in conv1.info["computed_weight"]
    assert graph.computed_weights == [("layer 'conv1' computes its weight in the forward pass (parametrization "
                                       "weight_norm); channel surgery cannot follow it")]
    assert [op.module for op in graph.layer_ops(("conv",))] == ["conv2"]


def test_functional_conv_with_module_parameters_is_a_layer():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return F.conv2d(self.conv(x), self.conv.weight, self.conv.bias, padding=1)

    graph = trace(Shared(), X)
    assert [(op.kind, op.module) for op in graph.ops] == [("conv", "conv"), ("conv", "conv")]


# -- tensors that do not come from the input ---------------------------------------------------------------------------


class _ConstantConcat(nn.Module):
    """Concatenates a learned (or constant) 2-channel map to the image or to conv1's output."""

    def __init__(self, after_conv: bool) -> None:
        super().__init__()
        self.after_conv = after_conv
        c = 8 if after_conv else 3
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1) if after_conv else nn.Identity()
        self.extra = nn.Parameter(torch.randn(1, 2, 1, 1))
        self.conv2 = nn.Conv2d(c + 2, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = self.conv1(x)
        h = torch.cat([h, self.extra.expand(h.shape[0], -1, *h.shape[2:])], dim=1)
        return self.fc(self.conv2(h).mean((2, 3)))


def test_constant_chunk_is_recorded_and_blocks_the_traced_chunk():
    model = _ConstantConcat(after_conv=True)
    graph = trace(model, X)
    cat = next(op for op in graph.ops if op.name == "cat")
    assert cat.kind == "cat"
    assert cat.info == {"sizes": [8, 2], "constant": [False, True]}
    conv1 = next(op for op in graph.ops if op.module == "conv1")
    assert cat.inputs == [conv1.output]  # only the traced chunk
    with pytest.raises(ConfigError, match="'cat' in _ConstantConcat concatenates 2 channels that do not come from "
                                          "the input .* to channel group 'conv1'"):
        check_traceable(model, X)


def test_constant_chunk_next_to_the_image_is_fine():
    # CoordConv-like: the image channels are never cut, so the constant chunk blocks nothing
    from resprout.surgery.resize import resize

    model = _ConstantConcat(after_conv=False).eval()
    groups = channel_groups(check_traceable(model, X))
    assert groups["conv2"].resizable
    grown = resize(model, {"conv2": list(range(8)) + [-1]}, X).model.eval()  # zero outgoing: same outputs
    with torch.no_grad():
        assert grown.conv2.out_channels == 9 and torch.allclose(grown(X), model(X), atol=1e-6)


# -- the zoo -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, options", [(n, {}) for n in available_models()] + [
    ("resnet18", {"stem": "imagenet"}), ("vgg11", {"head": "gap"})])
def test_every_zoo_model_traces_without_refusal(name, options):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=10, **options)
    graph = check_traceable(model, torch.randn(2, 3, 32, 32))
    assert not graph.computed_weights
    assert not [op for op in graph.ops if op.kind == "opaque"]


def test_writing_a_traced_tensor_into_a_constant_keeps_it_traced():
    class Scatter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(10, 4, 3, padding=1)

        def forward(self, x):
            h = self.conv1(x)
            out = torch.zeros(h.shape[0], 10, *h.shape[2:])
            out[:, :8] = h
            return self.conv2(out)

    graph = trace(Scatter(), X)
    assert [(op.kind, op.name) for op in graph.ops] == [("conv", "conv2d"), ("opaque", "__setitem__"),
                                                        ("conv", "conv2d")]
    with pytest.raises(ConfigError, match="'conv1'.*'__setitem__'"):
        check_traceable(Scatter(), X)


# -- Knowledge Evolution refuses when the run starts, not after a generation -----------------------------------------


class _FixedWidth(nn.Module):
    """Traces and splits fine, but its forward insists on 8 channels: only building the slim network fails."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = self.conv1(x).mean((2, 3))
        if h.shape[1] != 8:
            raise RuntimeError("expected 8 channels")
        return self.fc(h)


def _fit_start(model: nn.Module, **options):
    from types import SimpleNamespace

    from resprout.methods.evolution import KnowledgeEvolution

    ke = KnowledgeEvolution(**options)
    ke.input_shape = (3, 8, 8)
    trainer = SimpleNamespace(members={"model": SimpleNamespace(model=model)}, config=SimpleNamespace(seed=0))
    ke.on_fit_start(trainer)
    return ke


@pytest.mark.parametrize("model, message", [
    (_FixedWidth(), "the resized _FixedWidth does not run"),
    (_Between(lambda x: F.softmax(x, dim=1)), "'softmax'"),
    (_conv_net(lambda n: torch.nn.utils.parametrizations.weight_norm(n.conv2)), "layer 'conv2' computes its weight"),
])
def test_ke_kels_refuses_at_fit_start(model, message):
    with pytest.raises(ConfigError, match=message):
        _fit_start(model, split="kels")


def test_ke_wels_and_good_models_start():
    from resprout.methods.evolution import kels_masks, wels_masks

    model = _FixedWidth()
    ke = _fit_start(model, split="wels")
    assert ke.masks.keys() == wels_masks(model, 0.5, seed=0).keys()
    model = _Between(nn.Identity())
    ke = _fit_start(model, split="kels")
    ref = kels_masks(model, (3, 8, 8), 0.5)
    assert ke.masks.keys() == ref.keys() and all(torch.equal(ke.masks[k], ref[k]) for k in ref)
