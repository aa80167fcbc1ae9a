"""resize: one surgery that removes, reorders and adds channels, on every model of the zoo and on odd custom ones.

References are computed another way: growing with zero outgoing weights must not change the eval-mode output;
shrinking must equal the dense network with the removed channels zeroed (incoming weights, bias, norm scale/shift).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resprout.errors import ConfigError
from resprout.models import available_models, build_model
from resprout.models.registry import model_options
from resprout.surgery.channels import channel_groups
from resprout.surgery.graph import trace
from resprout.surgery.registry import get_surgery
from resprout.surgery.resize import resize
from tests.real_models import GROUPED, GroupedNet

SHAPE = (3, 16, 16)


# -- custom modules ----------------------------------------------------------------------------------------------
class OddNet(nn.Module):
    """Odd widths, a residual add, a bias-carrying conv and a flatten of a 2x2 map into the classifier."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 7, 3, padding=1), nn.BatchNorm2d(7)
        self.conv2, self.bn2 = nn.Conv2d(7, 13, 3, padding=1, bias=False), nn.BatchNorm2d(13)
        self.conv3 = nn.Conv2d(13, 13, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(13 * 4, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(x + self.conv3(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class CatNet(nn.Module):
    """Two branches concatenated, read by a 1x1 conv and by a depthwise conv with channel multiplier 2."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5)
        self.b, self.bn_b = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.dw, self.bn_dw = nn.Conv2d(11, 22, 3, padding=1, groups=11), nn.BatchNorm2d(22)
        self.mix = nn.Conv2d(11, 9, 1)
        self.fc = nn.Linear(22 + 9, 10)

    def forward(self, x):
        x = torch.cat([F.relu(self.bn_a(self.a(x))), F.relu(self.bn_b(self.b(x)))], 1)
        d = F.relu(self.bn_dw(self.dw(x))).mean((2, 3))
        m = F.relu(self.mix(x)).mean((2, 3))
        return self.fc(torch.cat([d, m], 1))


class SENet(nn.Module):
    """A depthwise conv and two squeeze-and-excitation gates x * sigmoid(fc(pool(x))): conv and linear flavours."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 9, 3, padding=1, bias=False), nn.BatchNorm2d(9)
        self.dw, self.bn_dw = nn.Conv2d(9, 9, 3, padding=1, groups=9, bias=False), nn.BatchNorm2d(9)
        self.se1, self.se2 = nn.Conv2d(9, 4, 1), nn.Conv2d(4, 9, 1)
        self.fc1, self.fc2 = nn.Linear(9, 3), nn.Linear(3, 9)
        self.head = nn.Linear(9, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.relu(self.bn_dw(self.dw(x)))
        x = x * torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1)))))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))))
        x = x * s.view(x.shape[0], -1, 1, 1)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Conv1dNet(nn.Module):
    """Conv1d with BatchNorm1d, a per-channel GroupNorm and an affine InstanceNorm1d."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv1d(3, 7, 3, padding=1), nn.BatchNorm1d(7)
        self.c2, self.gn = nn.Conv1d(7, 5, 3, padding=1), nn.GroupNorm(5, 5)
        self.c3, self.inorm = nn.Conv1d(5, 6, 3, padding=1), nn.InstanceNorm1d(6, affine=True)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        x = F.relu(self.gn(self.c2(x)))
        x = F.relu(self.inorm(self.c3(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool1d(x, 1), 1))


class MyConv(nn.Module):
    """A home-made conv layer: only ``weight`` and ``bias``, used through F.conv2d."""

    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=1)


class FunctionalNet(nn.Module):
    """A forward calling F.conv2d / F.batch_norm / F.linear with the parameters of its modules."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2 = MyConv(6, 5)
        self.fc = nn.Linear(5, 10)

    def forward(self, x):
        bn = self.bn1
        x = F.conv2d(x, self.conv1.weight, self.conv1.bias, padding=1)
        x = F.relu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False))
        x = F.relu(self.conv2(x))
        return F.linear(x.mean((2, 3)), self.fc.weight, self.fc.bias)


CUSTOM = {"odd": (OddNet, SHAPE), "cat": (CatNet, SHAPE), "se": (SENet, SHAPE), "conv1d": (Conv1dNet, (3, 16)),
          "functional": (FunctionalNet, SHAPE),
          # grouped convolutions: ResNeXt, and RegNetY with squeeze-excitation tied to the grouped conv's output
          **{name: (lambda kw=GROUPED[name]: GroupedNet(**kw), SHAPE) for name in ("resnext", "regnety")}}


def zoo_model(name: str) -> nn.Module:
    kw = {"width": 0.25} if "width" in model_options(name) else {}
    kw.update({"densenet-bc": {"depth": 10, "growth": 4}, "wrn": {"depth": 10, "widen": 1},
               "wrn-28-10": {"width": 0.05}}.get(name, {}))
    return build_model(name, in_channels=3, num_classes=10, **kw)


def randomize(model: nn.Module) -> nn.Module:
    """Non-trivial norm statistics, scales, shifts and biases, so that equivalence tests can fail."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            for name in ("running_mean", "bias"):
                t = getattr(m, name, None)
                if isinstance(t, torch.Tensor) and t.dim() == 1:
                    t.copy_(torch.rand(t.shape, generator=g) - 0.5)
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
                if getattr(m, "running_var", None) is not None:
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.25)
    return model.eval()


def make(case: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if case in CUSTOM:
        cls, shape = CUSTOM[case]
        model = cls()
    else:
        model, shape = zoo_model(case), SHAPE
    x = torch.randn((4, *shape), generator=torch.Generator().manual_seed(2))
    return randomize(model), x


def free_groups(model, x):
    return {k: g for k, g in channel_groups(trace(model, x[:2])).items() if g.resizable}


def alike(g, block: list[int]) -> list[int]:
    """The plan ``block`` of one block repeated in every block of a group split by a grouped convolution."""
    size = g.channels // g.blocks
    return [j + b * size if j >= 0 else -1 for b in range(g.blocks) for j in block]


def grow_plan(groups, gen):
    plan = {}
    for key, g in groups.items():
        index = list(range(g.channels // g.blocks))
        for _ in range(2):  # new channels at random places, not only at the end
            index.insert(int(torch.randint(len(index) + 1, (1,), generator=gen)), -1)
        plan[key] = alike(g, index)
    return plan


def shrink_plan(groups, gen):
    plan = {}
    for i, (key, g) in enumerate(groups.items()):
        size = g.channels // g.blocks
        keep = torch.randperm(size, generator=gen)[: max(1, size // 2)].tolist()
        plan[key] = alike(g, keep if i % 2 else sorted(keep))  # permuted and in order
    return plan


def zeroed(model, x, plan):
    """The dense network with the channels ``plan`` drops zeroed: the rows of every layer writing them (incoming
    weights, bias; a norm's scale and shift), found from where each group lives in every feature map."""
    dense = copy.deepcopy(model)
    graph = trace(dense, x[:2])
    groups = channel_groups(graph)
    drop: dict[int, set[int]] = {}
    for key, index in plan.items():
        g = groups[key]
        gone = set(range(g.channels)) - set(index)
        for nid, offset, k in g.places:
            drop.setdefault(nid, set()).update(offset + c * k + r for c in gone for r in range(k))
    with torch.no_grad():
        for op in graph.layer_ops():
            rows = sorted(drop.get(op.output, ()))
            module = dense.get_submodule(op.module)
            for name in ("weight", "bias"):
                t = getattr(module, name, None)
                if rows and isinstance(t, torch.Tensor):
                    t[rows] = 0
    return dense


def check_index_maps(old: nn.Module, new: nn.Module, maps, zero_outgoing=True):
    """Every tensor of ``new``: the mapped ones carry the old values at kept indices (and BN defaults / zero outgoing
    weights at new ones), every other one is unchanged."""
    old_sd, new_sd = old.state_dict(), new.state_dict()
    assert set(old_sd) == set(new_sd)
    assert set(maps) <= set(new_sd) and maps
    for name, t in new_sd.items():
        if name not in maps:
            assert torch.equal(t, old_sd[name]), name
            continue
        carried, keep = old_sd[name], torch.ones(t.shape, dtype=torch.bool)
        for dim, index in maps[name].items():
            assert t.shape[dim] == len(index) and max(index) < old_sd[name].shape[dim]
            idx = torch.tensor(index)
            carried = carried.index_select(dim, idx.clamp(min=0))
            shape = [1] * t.dim()
            shape[dim] = len(index)
            keep = keep & (idx >= 0).view(shape)
        assert torch.equal(t[keep], carried[keep]), name
        leaf = name.rpartition(".")[2]
        default = {"running_var": 1.0, "running_mean": 0.0, "bias": 0.0}.get(leaf)
        module = new.get_submodule(name.rpartition(".")[0])
        if leaf == "weight" and isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
            default = 1.0
        if default is not None:
            assert (t[~keep] == default).all(), name
        if leaf == "weight" and 1 in maps[name] and zero_outgoing:
            rows = torch.tensor([j >= 0 for j in maps[name].get(0, range(t.shape[0]))])
            cols = torch.tensor([j < 0 for j in maps[name][1]])
            assert (t[rows][:, cols] == 0).all(), name


def close(got, expected):
    """Equal to 1e-5, relative to the output's scale (deep residual stacks with random BN reach large values)."""
    scale = expected.abs().max().clamp(min=1)
    return got.shape == expected.shape and torch.allclose(got / scale, expected / scale, atol=1e-5, rtol=0)


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


HEAVY = {"resnet110"}  # the deepest model: over 2 s to grow here, so in the slow tier (not in make test-fast)
CASES = [pytest.param(c, marks=pytest.mark.slow) if c in HEAVY else c for c in available_models() + list(CUSTOM)]


@pytest.mark.parametrize("case", CASES)
def test_growing_every_group_with_zero_outgoing_weights_keeps_the_output(case):
    model, x = make(case)
    groups = free_groups(model, x)
    assert groups
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = grow_plan(groups, torch.Generator().manual_seed(3))
    result = resize(model, plan, x[:2], seed=5)
    grown = result.model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in model.parameters())
    assert close(outputs(grown, x), outputs(model, x))
    check_index_maps(model, grown, result.index_maps)
    regrouped = free_groups(grown, x)
    assert {k: g.channels for k, g in regrouped.items()} == {k: len(plan[k]) for k in groups}
    # new incoming weights come from the initializer (not zeros), seeded
    name, dims = next((n, d) for n, d in result.index_maps.items() if n.endswith("weight") and -1 in d.get(0, []))
    w = grown.state_dict()[name]
    assert w[torch.tensor(dims[0]) < 0].abs().sum() > 0
    again = resize(model, plan, x[:2], seed=5).model.state_dict()
    assert all(torch.equal(again[k], v) for k, v in grown.state_dict().items())


@pytest.mark.parametrize("case", CASES)
def test_shrinking_equals_the_dense_network_with_the_removed_channels_zeroed(case):
    model, x = make(case)
    plan = shrink_plan(free_groups(model, x), torch.Generator().manual_seed(4))
    result = resize(model, plan, x[:2])
    slim = result.model
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    expected = outputs(zeroed(model, x, plan), x)
    assert close(outputs(slim, x), expected)
    assert not close(outputs(model, x), expected)  # the reference really differs from dense
    check_index_maps(model, slim, result.index_maps)


def test_group_keys_ties_and_places():
    model, x = make("se")
    groups = channel_groups(trace(model, x))
    assert list(groups) == ["input", "conv", "se1", "fc1", "output"]
    assert groups["conv"].writers == ["conv", "se2", "fc2"]  # both gates are tied to the gated channels
    model, x = make("odd")
    groups = channel_groups(trace(model, x))
    assert list(groups) == ["input", "conv1", "conv2", "output"]
    assert groups["conv2"].writers == ["conv2", "conv3"]  # the residual add ties conv3 to conv2
    flat = [p for p in groups["conv2"].places if p[2] == 4]
    assert flat  # flatten of a 2x2 map: channel c is features 4c..4c+3 of fc's input
    model, x = make("cat")
    groups = channel_groups(trace(model, x))
    assert list(groups) == ["input", "a", "b", "mix", "output"]  # dw follows its input: no group of its own
    # the depthwise output is the concatenation's groups, each channel twice: a at offset 0, b at 2 * 5
    assert any(k == 2 and off == 0 for _, off, k in groups["a"].places)
    assert any(k == 2 and off == 10 for _, off, k in groups["b"].places)
    result = resize(model, {"a": [4, 0, -1], "b": [5, 1]}, x[:2])
    assert result.index_maps["dw.weight"] == {0: [8, 9, 0, 1, -1, -1, 20, 21, 12, 13]}
    assert result.index_maps["mix.weight"] == {1: [4, 0, -1, 10, 6]}
    assert result.model.dw.groups == 5 and result.model.dw.out_channels == 10


def test_whole_groups_of_a_group_norm_can_be_kept_and_added():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 3))
    model, x = randomize(net), torch.randn(4, *SHAPE)
    grown = resize(model, {"0": list(range(8)) + [-1] * 4}, x[:2]).model
    assert grown[1].num_groups == 3
    assert close(outputs(grown, x), outputs(model, x))
    plan = {"0": [4, 5, 6, 7]}
    assert close(outputs(resize(model, plan, x[:2]).model, x), outputs(zeroed(model, x, plan), x))
    with pytest.raises(ConfigError, match="whole groups of 4 channels"):
        resize(model, {"0": [0, 1, 2, 3, 4]}, x[:2])


# -- refusals ----------------------------------------------------------------------------------------------------
def one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(ConfigError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_refusals_are_one_line_config_errors():
    model, x = make("odd")
    one_line_error("cannot resize channel group 'input': it holds the network's input", resize, model,
                   {"input": [0, 1]}, x)
    one_line_error("cannot resize channel group 'output'", resize, model, {"output": list(range(9))}, x)
    one_line_error("unknown channel group 'nope'", resize, model, {"nope": [0]}, x)
    one_line_error("has index 7, out of range", resize, model, {"conv1": [0, 7]}, x)
    one_line_error("has index -2", resize, model, {"conv1": [0, -2]}, x)
    one_line_error("uses old channel 3 more than once", resize, model, {"conv1": [3, 1, 3]}, x)
    one_line_error("leaves it without channels", resize, model, {"conv1": []}, x)
    assert resize(model, {"input": [0, 1, 2]}, x).index_maps == {}  # an identity plan changes nothing

    grouped = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(8, 2))
    one_line_error("^plan of channel group '0' must cut its 4 groups of 2 channels alike \\(it is read by grouped "
                   "convolution '1' \\(groups=4\\)\\): the same channels of every group, group after group$",
                   resize, grouped, {"0": [0, 1, 2, 3]}, x)
    one_line_error("group '1' must cut its 4 groups of 2 channels alike \\(it is written by grouped convolution '1'",
                   resize, grouped, {"1": [0, 2, 4, 7]}, x)
    one_line_error("group '1' must cut its 4 groups", resize, grouped, {"1": [0, -1, 2, -1, 4, 6, -1]}, x)
    cut = resize(grouped, {"0": [1, 3, 5, 7], "1": [0, -1, 2, -1, 4, -1, 6, -1]}, x)  # alike: second of each, grown
    assert cut.index_maps["1.weight"] == {0: [0, -1, 2, -1, 4, -1, 6, -1], 1: [1]}
    assert (cut.model[1].groups, cut.model[1].in_channels, cut.model[1].out_channels) == (4, 4, 8)

    class Shuffle(nn.Module):
        def forward(self, x):
            return x.flip(1)

    opaque = nn.Sequential(nn.Conv2d(3, 4, 1), Shuffle(), nn.Conv2d(4, 2, 1))
    one_line_error("it flows into 'flip'", resize, opaque, {"0": [0, 1]}, x)
    ln = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 2))
    one_line_error("layer norm '3' normalizes over its channels", resize, ln, {"0": [0, 1]}, x)

    class FixedCount(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.out(self.conv(x) * torch.ones(1, 8, 1, 1))

    # a per-channel constant the tracer sees: refused when the plan is made
    one_line_error("cannot resize channel group 'conv': it flows into 'mul'", resize, FixedCount(),
                   {"conv": [0, 1, 2]}, x)

    class Asserts(nn.Module):  # a fixed count the tracer cannot see: the check run of the result catches it
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            h = self.conv(x)
            if h.shape[1] != 8:
                raise RuntimeError("expected 8 channels")
            return self.out(h)

    one_line_error("the resized Asserts does not run .*fixed channel count", resize, Asserts(),
                   {"conv": [0, 1, 2]}, x)
    one_line_error("unknown resize init 'he'", resize, model, {"conv1": [0, -1]}, x, init="he")


def test_init_options_and_callable_initializer_use_their_own_generator():
    model, x = make("odd")
    plan = {"conv1": list(range(7)) + [-1, -1]}
    torch.manual_seed(0)
    a = resize(model, plan, x, seed=1).model
    state = torch.random.get_rng_state()
    b = resize(model, plan, x, seed=1).model
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not used
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(resize(model, plan, x, seed=2).model.conv1.weight, a.conv1.weight)
    assert (resize(model, plan, x, init="zeros").model.conv1.weight[7:] == 0).all()
    filled = resize(model, plan, x, init=lambda t, g: t.fill_(0.5)).model
    assert (filled.conv1.weight[7:] == 0.5).all() and torch.equal(filled.conv1.weight[:7], model.conv1.weight)
    live = resize(model, plan, x, zero_outgoing=False).model
    assert (live.conv2.weight[:, 7:] != 0).any() and (a.conv2.weight[:, 7:] == 0).all()
    std = a.conv1.weight[7:].std().item()  # Kaiming-normal, fan_out = 9 * 3 * 3
    assert 0.5 * (2 / 81) ** 0.5 < std < 1.5 * (2 / 81) ** 0.5


# -- the registered, replayable surgery --------------------------------------------------------------------------
def test_registered_resize_op_from_plain_data_gives_the_same_result_twice():
    model = randomize(zoo_model("resnet20"))
    op = get_surgery("resize")
    args = {"plan": {"conv1": [3, 0, -1, -1, 2], "layer2.0.conv1": [0, 1, -1]}, "input_shape": [3, 16, 16],
            "init": "kaiming", "zero_outgoing": True, "seed": 7}
    first, second = op(model, **args), op(model, **args)
    s1, s2 = first.model.state_dict(), second.model.state_dict()
    assert {k: v.shape for k, v in s1.items()} == {k: v.shape for k, v in s2.items()}
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert first.index_maps == second.index_maps
    assert first.model.conv1.out_channels == 5 and first.model.layer1[0].conv2.out_channels == 5
    assert s1["layer2.0.conv1.weight"].shape[0] == 3
