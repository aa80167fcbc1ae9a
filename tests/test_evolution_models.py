"""Knowledge Evolution on more real models (stand-ins in tests/real_models.py, torchvision does not import here):
grouped convolutions (ResNeXt, RegNetX/Y) with a per-group KELS prefix, PyTorch's MNIST example ending in
``log_softmax``, a Conv1d (and Conv3d) stack flattened into a Linear; ShuffleNet's channel shuffle and ConvNeXt's
LayerNorm over the channels are refused in one line.

References are computed another way: masks by plain loops over the rule "the first ceil(s_r C/g) channels of every
group"; the slim network against the dense network with the dropped channels' rows zeroed (weights, bias, BN scale and
shift, from a hand-written table of which layer writes channels split by which grouped convolution), and against a
network of the expected slim widths built directly, which must load the slim network's weights shape for shape.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from resprout.errors import ConfigError
from resprout.methods.evolution import fit_hypothesis, kels_masks
from resprout.run import train
from resprout.surgery.channels import check_traceable
from tests.conftest import synthetic
from tests.real_models import GROUPED, ConvNeXtBlock, FlatNet, GroupedNet, MNISTNet, ShuffleUnit
from tests.test_resize import randomize


def kept(channels: int, blocks: int, rate: float) -> list[int]:
    """The rule, by loops: channel c of a group split into ``blocks`` equal blocks is kept when it is among the first
    ceil(rate * block size) of its block."""
    size = channels // blocks
    n = math.ceil(rate * size)
    return [c for c in range(channels) if c % size < n]


def grouped_rows(kw: dict) -> dict[str, int]:
    """Module -> how many blocks its output channels are split into, for :class:`GroupedNet` (by hand: conv1 and
    conv2 write what a grouped conv2 reads and writes; SE's fc2 is tied to conv2 by the gate; the depthwise conv2
    has no blocks of its own, it follows conv1)."""
    g = 1 if kw["groups"] == kw["width"] else kw["groups"]
    rows = {"stem": 1, "bn": 1, "block1.shortcut.0": 1, "block1.shortcut.1": 1}
    for b in ("block1", "block2"):
        rows.update({f"{b}.conv1": g, f"{b}.bn1": g, f"{b}.conv2": g, f"{b}.bn2": g, f"{b}.conv3": 1, f"{b}.bn3": 1})
        if kw.get("squeeze"):
            rows.update({f"{b}.se.fc1": 1, f"{b}.se.fc2": g})
    return rows


def zero_dropped(model: nn.Module, rows: dict[str, int], rate: float) -> nn.Module:
    """A copy of ``model`` whose channels outside the KELS plan are zero: for every module of ``rows``, its weight
    rows and bias (a norm's scale and shift) of channels the rule drops."""
    dense = copy.deepcopy(model)
    with torch.no_grad():
        for path, blocks in rows.items():
            module = dense.get_submodule(path)
            n = module.weight.shape[0]
            drop = [c for c in range(n) if c not in kept(n, blocks, rate)]
            for t in (module.weight, module.bias):
                if t is not None:
                    t[drop] = 0
    return dense


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def assert_exact(slim: nn.Module, dense: nn.Module, zeroed: nn.Module, x: torch.Tensor) -> None:
    got, expected = outputs(slim, x), outputs(zeroed, x)
    scale = expected.abs().max().clamp(min=1)
    assert got.shape == expected.shape
    assert torch.allclose(got / scale, expected / scale, atol=1e-5, rtol=0)
    assert not torch.allclose(outputs(dense, x), expected, atol=1e-3)  # the zeroing really changed something


X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))


# -- grouped convolutions --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.5, 0.3])
@pytest.mark.parametrize("name", list(GROUPED))
def test_kels_masks_keep_the_prefix_of_every_group(name, rate):
    kw = GROUPED[name]
    model = GroupedNet(**kw)
    masks = kels_masks(model, (3, 16, 16), rate)
    g = grouped_rows(kw)["block1.conv2"]  # blocks of the grouped conv's channels (1 for the depthwise conv)
    w, per_group = kw["width"], kw["width"] // kw["groups"]
    expected = {  # module: (kept rows, kept columns)
        "block1.conv1": (kept(w, g, rate), kept(16, 1, rate)),  # reads the stem
        # column t of a grouped conv is input t of the row's own group: the same prefix in every group
        "block1.conv2": (kept(w, g, rate), kept(per_group, 1, rate)),
        "block2.conv3": (kept(48, 1, rate), kept(w, g, rate)),  # an ungrouped 1x1 reading the grouped conv's blocks
    }
    for path, (rows, cols) in expected.items():
        mask = torch.zeros(model.get_submodule(path).weight.shape, dtype=torch.bool)
        for r in rows:
            for c in cols:
                mask[r, c] = True
        assert torch.equal(masks[f"{path}.weight"], mask), path
    assert masks["fc.weight"][:, :math.ceil(rate * 48)].all()  # the classifier keeps every class


@pytest.mark.parametrize("name", list(GROUPED))
def test_grouped_slim_network_is_exact_and_has_the_expected_widths(name):
    kw, rate = GROUPED[name], 0.5
    torch.manual_seed(0)
    dense = randomize(GroupedNet(**kw))
    slim = fit_hypothesis(dense, (3, 16, 16), rate)
    assert_exact(slim, dense, zero_dropped(dense, grouped_rows(kw), rate), X)
    # the same network built directly at the slim widths: every group of a grouped conv keeps ceil(s_r C/g)
    g, w = kw["groups"], kw["width"]
    width = math.ceil(rate * w) if g == w else g * math.ceil(rate * w / g)
    small = GroupedNet(groups=width if g == w else g, width=width, stem=8, out=24, squeeze=tuple(
        math.ceil(rate * s) for s in kw["squeeze"]) if kw.get("squeeze") else None)
    assert {k: v.shape for k, v in slim.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}
    assert slim.block1.conv2.groups == small.block1.conv2.groups
    small.load_state_dict(slim.state_dict())
    assert torch.equal(outputs(small, X), outputs(slim, X))


def test_a_grouped_network_trains_under_ke_and_reports_its_real_slim_network():
    kw = dict(GROUPED["regnety"], in_channels=3, classes=4)
    result = train(**synthetic(method="ke", generations=2, epochs=1, data_options={
        "num_classes": 4, "n_train": 128, "n_test": 32, "image_size": 8, "channels": 3}),
        module=lambda: GroupedNet(**kw), save=False)
    small = GroupedNet(groups=3, width=24, squeeze=(2, 6), stem=8, out=24, in_channels=3, classes=4)
    for gen in result["generations"]:
        assert gen["model"]["slim_params"] == sum(p.numel() for p in small.parameters())


# -- the classes behind a softmax, one flatten rule ------------------------------------------------------------------
def test_mnist_example_with_log_softmax_keeps_every_class_and_slims_exactly():
    torch.manual_seed(0)
    dense = randomize(MNISTNet())
    x = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    check_traceable(dense, x)  # the log_softmax over the classes is accepted
    masks = kels_masks(dense, (1, 12, 12), 0.5)
    assert masks["fc2.weight"].sum() == 10 * 64 and masks["fc2.weight"][:, :64].all()  # every class kept
    # fc1 reads the flatten of a 64 x 4 x 4 map: the kept 32 channels are its first 32 * 16 features
    assert masks["fc1.weight"].sum() == 64 * 512 and masks["fc1.weight"][:64, :512].all()
    slim = fit_hypothesis(dense, (1, 12, 12), 0.5)
    assert (slim.conv1.out_channels, slim.conv2.out_channels, slim.fc1.in_features, slim.fc1.out_features,
            slim.fc2.out_features) == (16, 32, 512, 64, 10)
    zeroed = zero_dropped(dense, {"conv1": 1, "conv2": 1, "fc1": 1}, 0.5)
    assert_exact(slim, dense, zeroed, x)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_stacks_of_every_dimension_flatten_into_a_linear_by_one_rule(dims):
    torch.manual_seed(0)
    dense = randomize(FlatNet(dims))
    x = torch.randn(4, 4, *[8] * dims, generator=torch.Generator().manual_seed(3))
    slim = fit_hypothesis(dense, (4, *[8] * dims), 0.5)
    spatial = 2 ** dims  # a 24 x 2^dims map: channel c is features c * 2^dims ... (c + 1) * 2^dims - 1
    assert slim.fc1.in_features == 12 * spatial and slim.fc2.out_features == 6
    assert torch.equal(slim.fc1.weight, dense.fc1.weight[:16, :12 * spatial])
    assert_exact(slim, dense, zero_dropped(dense, {"conv1": 1, "bn1": 1, "conv2": 1, "fc1": 1}, 0.5), x)


# -- refused in one line ----------------------------------------------------------------------------------------------
SUPPORTED = "(supported: layers, elementwise calls, concatenation along channels, flatten)"


@pytest.mark.parametrize("model, line", [
    (ShuffleUnit(), "channel surgery cannot cut channel group 'branch1.2': it flows into 'view' in ShuffleUnit, "
                    "which splits the channels into several dims (as a channel shuffle does); resize cannot follow it "
                    + SUPPORTED),
    (ConvNeXtBlock(), "channel surgery cannot cut channel group 'stem.0': it flows into 'permute' in stem.1, which "
                      "moves the channels away from dim 1 (e.g. to channels-last for a LayerNorm or Linear over "
                      "them); resize cannot follow it " + SUPPORTED),
    (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(4), nn.LayerNorm([8, 4, 4]), nn.Flatten(),
                   nn.Linear(128, 10)),
     "channel surgery cannot cut channel group '0': layer norm '2' normalizes over its channels, so they cannot "
     "change without changing the other channels' outputs"),
], ids=["shufflenet", "convnext", "layernorm"])
def test_channel_shuffle_and_layer_norm_over_the_channels_are_refused_in_one_line(model, line):
    from tests.test_graph import _fit_start

    with pytest.raises(ConfigError) as e:
        check_traceable(model, X[:2])
    assert str(e.value) == line
    with pytest.raises(ConfigError) as e:  # KE refuses when the run starts, with the same line
        _fit_start(model, split="kels")
    assert str(e.value) == line


def test_a_grouped_network_is_refused_by_default_and_accepted_by_ke():
    from tests.test_graph import _fit_start

    model = GroupedNet(**GROUPED["resnext"])
    with pytest.raises(ConfigError) as e:  # other surgery (Neural Rejuvenation) cuts channel by channel
        check_traceable(model, X[:2])
    assert str(e.value) == ("channel surgery cannot cut channel group 'block1.conv1' channel by channel: it is read "
                            "by grouped convolution 'block1.conv2' (groups=8), so every group must keep the same "
                            "channels; only a plan that cuts all 8 groups alike can (Knowledge Evolution's KELS)")
    from resprout.methods.rejuvenation.monitor import topology

    with pytest.raises(ConfigError, match="^channel surgery cannot cut channel group 'block1.conv1' channel by"):
        topology(model, (3, 8, 8))  # Neural Rejuvenation refuses it when its run starts
    check_traceable(model, X[:2], grouped=True)
    ke = _fit_start(model, split="kels")
    ref = kels_masks(model, (3, 8, 8), 0.5)
    assert ke.masks.keys() == ref.keys() and all(torch.equal(ke.masks[k], ref[k]) for k in ref)


class _Clash(nn.Module):
    """Two grouped convs whose outputs are added: groups=2 and groups=3 over 12 channels do not nest."""

    def __init__(self, groups=(2, 3)) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 1)
        self.a, self.b = nn.Conv2d(12, 12, 3, padding=1, groups=groups[0]), nn.Conv2d(12, 12, 3, padding=1,
                                                                                    groups=groups[1])
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        x = self.stem(x)
        return self.fc((self.a(x) + self.b(x)).mean((2, 3)))


class _CatIntoGrouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.g(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))


def test_grouped_convolutions_that_cannot_be_cut_alike_are_refused_not_guessed():
    with pytest.raises(ConfigError) as e:
        kels_masks(_Clash(), (3, 8, 8), 0.5)
    assert str(e.value) == ("cannot cut channel group 'stem' as a prefix: grouped convolutions 'b' (groups=3) and 'a' "
                            "(groups=2) split it into groups that do not nest, so no per-group cut fits both")
    with pytest.raises(ConfigError) as e:
        check_traceable(_CatIntoGrouped(), X[:2], grouped=True)
    assert str(e.value) == ("channel surgery cannot cut channel group 'a': it is read by grouped convolution 'g' "
                            "(groups=2) together with other channels (a concatenation or a depthwise multiplier), so "
                            "its groups cannot be cut alike")
    # nested splits (groups=2 and groups=4 over 12 channels) are cut as the finer one: 3 channels per block, 2 kept
    torch.manual_seed(0)
    nested = _Clash((2, 4))
    slim = fit_hypothesis(nested, (3, 8, 8), 0.5)
    assert slim.stem.out_channels == 8 and (slim.a.groups, slim.b.groups) == (2, 4)
    rows = {"stem": 4, "a": 4, "b": 4}
    assert_exact(slim, nested, zero_dropped(nested, rows, 0.5), X)
