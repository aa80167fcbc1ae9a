"""RePr (Prakash et al., CVPR 2019): the orthogonality rank against the paper's formula by hand, the global ranking,
the stem and projection shortcuts found in the traced graph (against hand-made lists, on networks whose module
names mislead) and left out of the ranking, dropped filters held at zero through the sub-network phase, restored
filters orthogonal to the kept ones, the cycle plan against the paper's proportions, refusals, resume in the middle
of a phase."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.repr import (
    _trace, conv_roles, excluded_convs, filter_orthogonality, generation_s2, orthogonal_reinit, rank_filters,
    repr_plan)
from resprout.models import build_model
from resprout.run import resume, train
from tests.conftest import synthetic
from tests.test_trainer import CRASH, Crash, assert_same_weights, metric_rows, weights


def hand_orthogonality(weight: torch.Tensor) -> list[float]:
    """Eq. 2-3 with plain Python: unit-normalize each flattened filter, O_f = sum_j |<w_f, w_j> - [f == j]| / J."""
    rows = [r for r in weight.flatten(1).tolist()]
    unit = [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]
    J = len(unit)
    return [sum(abs(sum(a * b for a, b in zip(unit[f], unit[j])) - (1.0 if f == j else 0.0)) for j in range(J)) / J
            for f in range(J)]


def test_orthogonality_matches_the_papers_formula_by_hand_on_a_tiny_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 2, bias=False)
    got = filter_orthogonality(conv.weight)
    assert got.tolist() == pytest.approx(hand_orthogonality(conv.weight.detach()), rel=1e-9)
    # orthogonal filters score 0; a duplicated pair scores 1/J each from the other (plus |1 - 1| = 0 on the diagonal)
    eye = torch.eye(4).view(4, 1, 2, 2)
    assert filter_orthogonality(eye).tolist() == [0.0] * 4
    dup = eye.clone()
    dup[1] = dup[0]
    assert filter_orthogonality(dup).tolist() == pytest.approx([0.25, 0.25, 0.0, 0.0])


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 2, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 6, 1, bias=False)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.b(torch.relu(self.bn(self.a(x)))).mean((2, 3)))


def test_ranking_is_global_over_the_network_and_keeps_a_filter_per_layer():
    net = TwoConvs()
    with torch.no_grad():
        net.a.weight.copy_(torch.eye(4).view(4, 1, 2, 2))  # orthogonal: never redundant
        b = torch.eye(6, 4)
        b[4] = b[0] + 0.01 * b[1]  # two near-duplicates of filter 0, filter 5 = 0.9 filter 2 + ...
        b[5] = b[2] * 0.9 + 0.1 * b[3]
        net.b.weight.copy_(b.view(6, 4, 1, 1))
    scores = {n: filter_orthogonality(m.weight) for n, m in (("a", net.a), ("b", net.b))}
    everything = sorted(((float(v), n, f) for n, s in scores.items() for f, v in enumerate(s)), reverse=True)
    k = round(0.3 * 10)
    expected = {}
    for _, n, f in everything[:k]:
        expected.setdefault(n, []).append(f)
    assert rank_filters(net, 0.3) == {n: sorted(f) for n, f in expected.items()}
    assert "a" not in rank_filters(net, 0.3)  # global: the orthogonal layer loses nothing
    per_layer = rank_filters(net, 0.3, ranking="layer")
    assert len(per_layer["a"]) == round(0.3 * 4) and len(per_layer["b"]) == round(0.3 * 6)
    assert all(len(f) <= 5 for f in rank_filters(net, 0.99).values()) and len(rank_filters(net, 0.99)["a"]) == 3


def test_reinit_is_orthogonal_to_the_kept_filters_and_to_the_old_values():
    g = torch.Generator().manual_seed(0)
    kept, old = torch.randn(5, 8, 3, 3, generator=g), torch.randn(3, 8, 3, 3, generator=g)
    new, what = orthogonal_reinit(kept, old, torch.Generator().manual_seed(1))
    assert what == "kept+old" and new.shape == old.shape
    n, kf, of = new.flatten(1).double(), kept.flatten(1).double(), old.flatten(1).double()
    # float32 filters of norm ~8: a dot product of 1e-5 is an angle of 90 degrees to 1e-7
    assert (n @ kf.T).abs().max() < 1e-5 and (n @ of.T).abs().max() < 1e-5
    scale = kf.norm(dim=1).mean()
    assert torch.allclose(n @ n.T, torch.eye(3, dtype=torch.float64) * scale**2, atol=1e-4)  # orthogonal too
    # 9 weights per filter, 6 kept + 4 dropped: no room for the old values, still orthogonal to the kept ones
    kept, old = torch.randn(6, 1, 3, 3, generator=g), torch.randn(3, 1, 3, 3, generator=g)
    new, what = orthogonal_reinit(kept, old, torch.Generator().manual_seed(1))
    assert what == "kept" and (new.flatten(1) @ kept.flatten(1).T).abs().max() < 1e-5


def hand_plan(epochs: int, s1: int, s2: int, s1_paper: int, s2_paper: int, last: int, n: int) -> list:
    """The schedule written out: phase lengths scaled by E / (N (S1 + S2) + last), rounded half up (Fractions), at
    least one epoch; cycles while a full epoch is left after the restore."""
    total = n * (s1_paper + s2_paper) + last
    s1 = s1 or max(1, math.floor(Fraction(epochs * s1_paper, total) + Fraction(1, 2)))
    s2 = s2 or max(1, math.floor(Fraction(epochs * s2_paper, total) + Fraction(1, 2)))
    plan, start = [], 0
    while len(plan) < n and start + s1 + s2 < epochs:
        plan.append((start + s1, start + s1 + s2))
        start += s1 + s2
    return plan


def test_cycle_plan_keeps_the_papers_proportions_and_says_how_few_epochs_scale():
    # RePr: S1 = 20, S2 = 10, three cycles and a last full phase of S1: 110 epochs
    assert repr_plan(110) == [(20, 30), (50, 60), (80, 90)]
    assert repr_plan(220) == [(40, 60), (100, 120), (160, 180)]
    assert repr_plan(11) == [(2, 3), (5, 6), (8, 9)]  # the smallest run that keeps 20 : 10 : 110 exactly
    # the Knowledge Evolution paper's re-run: S1 = 50, S2 = 10 of 200 epochs
    assert repr_plan(200, scale="ke-paper") == [(50, 60), (110, 120), (170, 180)]
    for epochs in range(3, 400):
        assert repr_plan(epochs) == hand_plan(epochs, 0, 0, 20, 10, 20, 3), epochs
        assert repr_plan(epochs, cycles=2) == hand_plan(epochs, 0, 0, 20, 10, 20, 2), epochs
        assert repr_plan(epochs, scale="ke-paper") == hand_plan(epochs, 0, 0, 50, 10, 20, 3), epochs
        if epochs > 4:  # S1 given, S2 scaled
            assert repr_plan(epochs, 3, 0) == hand_plan(epochs, 3, 0, 20, 10, 20, 3), epochs
        if epochs >= 33:  # phases of 6/3 epochs and more: the sub-network share stays near the paper's 30/110
            sub = sum(r - d for d, r in repr_plan(epochs))
            assert abs(sub / epochs - 30 / 110) <= 1.5 / epochs + 1e-12, epochs
    # few epochs: phases never shrink below one epoch; fewer cycles run instead, down to one
    assert repr_plan(7) == [(1, 2), (3, 4), (5, 6)]
    assert repr_plan(5) == [(1, 2), (3, 4)]
    assert repr_plan(4) == repr_plan(3) == [(1, 2)]
    with pytest.raises(ConfigError, match="leaves no room for one cycle"):
        repr_plan(2)
    assert repr_plan(5, 1, 1, 3) == [(1, 2), (3, 4)]
    # one cycle per generation: the paper's share of a cycle, S2 / (S1 + S2)
    assert [generation_s2(e) for e in (1, 2, 3, 6, 30, 31)] == [1, 1, 1, 2, 10, 10]
    assert [generation_s2(e, "ke-paper") for e in (3, 6, 30)] == [1, 1, 5]


# -- the stem and the projection shortcuts, from the graph ---------------------------------------------------------------
class Misnamed(nn.Module):
    """A residual network whose names lie: ``shortcut`` is the stem, ``downsample`` is the main branch's first
    conv, ``body`` is the projection shortcut, ``head`` a 1x1 conv after the add that reads no image."""

    def __init__(self):
        super().__init__()
        self.shortcut = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.downsample = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.body = nn.Conv2d(8, 16, 1, bias=False)
        self.bnb = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = torch.relu(self.bn0(self.shortcut(x)))
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.downsample(x)))))
        out = torch.relu(out + self.bnb(self.body(x)))
        out = out + self.head(out)  # identity beside a single conv: the conv is the residual, not a shortcut
        return self.fc(out.mean((2, 3)))


class TwoSingleConvBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.p = nn.Conv2d(8, 8, 3, padding=1)
        self.q = nn.Conv2d(8, 8, 1)
        self.unused = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = torch.relu(self.a(x))
        return self.fc((self.p(x) + self.q(x)).mean((2, 3)))


def test_stem_and_projection_shortcuts_come_from_the_graph_not_the_names():
    roles = conv_roles(_trace(Misnamed(), (1, 8, 8)))
    assert roles["stem"] == ["shortcut"] and roles["shortcut"] == ["body"] and roles["ambiguous"] == []
    net = Misnamed()
    assert excluded_convs(net, _trace(net, (1, 8, 8))) == {"body": "projection shortcut", "shortcut": "stem"}
    assert excluded_convs(net, _trace(net, (1, 8, 8)), include_stem=True) == {"body": "projection shortcut"}
    assert excluded_convs(net, _trace(net, (1, 8, 8)), include_shortcuts=True) == {"shortcut": "stem"}
    # the library's ResNet (torchvision names, option-B shortcuts) and a pre-activation wide ResNet, listed by hand
    r20 = build_model("resnet20", in_channels=1, num_classes=4, width=0.5)
    assert excluded_convs(r20, _trace(r20, (1, 8, 8))) == {"conv1": "stem",
                                                          "layer2.0.downsample.0": "projection shortcut",
                                                          "layer3.0.downsample.0": "projection shortcut"}
    wrn = build_model("wrn-16-4", in_channels=3, num_classes=4)
    assert conv_roles(_trace(wrn, (3, 8, 8)))["shortcut"] == ["layer1.0.shortcut", "layer2.0.shortcut",
                                                            "layer3.0.shortcut"]
    for plain in ("cnn", "vgg11", "mobilenetv2"):  # no projection shortcut (MobileNetV2's adds are identities)
        m = build_model(plain, in_channels=1, num_classes=4)
        assert conv_roles(_trace(m, (1, 8, 8)))["shortcut"] == [], plain


def test_what_the_graph_cannot_tell_is_refused_in_one_line():
    net = TwoSingleConvBranches()
    graph = _trace(net, (1, 8, 8))
    with pytest.raises(ConfigError, match="did not run on an example input") as e:
        excluded_convs(net, graph)  # 'unused' never runs: stem or shortcut, who knows
    assert "'unused'" in str(e.value) and "\n" not in str(e.value)
    del net.unused
    with pytest.raises(ConfigError, match="cannot tell which is the projection shortcut") as e:
        excluded_convs(net, graph)
    assert "'p', 'q'" in str(e.value) and "repr.include_shortcuts=true" in str(e.value)
    assert excluded_convs(net, graph, include_shortcuts=True) == {"a": "stem"}
    assert excluded_convs(net, graph, include_stem=True, include_shortcuts=True) == {}


def test_by_default_the_stem_and_shortcuts_are_not_ranked_and_the_rest_is_ranked_globally():
    torch.manual_seed(0)
    net = build_model("resnet20", in_channels=1, num_classes=4, width=0.5)
    # the case: the full-width stem has 16 filters of 9 weights (one input channel), so it can never be
    # orthogonal. Welch bound on the RMS cosine of J unit vectors in d < J dimensions: sqrt((J - d) / (d (J - 1)))
    net16 = build_model("resnet20", in_channels=1, num_classes=4)
    u = net16.conv1.weight.detach().flatten(1).double()
    u = u / u.norm(dim=1, keepdim=True)
    rms = float(((u @ u.T)[~torch.eye(16, dtype=torch.bool)] ** 2).mean().sqrt())
    assert rms >= math.sqrt((16 - 9) / (9 * 15)) - 1e-12 and math.sqrt(7 / 135) > 0.227
    everything = rank_filters(net16, 0.3)  # ranked with the rest (the old default), the stem loses most filters
    assert len(everything["conv1"]) >= 12
    # the default: a global ranking, by hand, over every conv but the stem and the two projections
    left_out = {"conv1", "layer2.0.downsample.0", "layer3.0.downsample.0"}
    convs = {n: m for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and n not in left_out}
    scores = {n: filter_orthogonality(m.weight) for n, m in convs.items()}
    entries = sorted(((float(v), n, f) for n, s in scores.items() for f, v in enumerate(s)),
                     key=lambda t: (-t[0], t[1], t[2]))
    budget, hand = round(0.3 * len(entries)), {}
    for _, n, f in entries:
        if budget and len(hand.get(n, [])) < convs[n].out_channels - 1:
            hand.setdefault(n, []).append(f)
            budget -= 1
    excluded = excluded_convs(net, _trace(net, (1, 8, 8)))
    assert set(excluded) == left_out
    assert rank_filters(net, 0.3, exclude=excluded) == {n: sorted(f) for n, f in hand.items()}


class RePrProbe(Method):
    """Listed before repr: after every step of a sub-network phase, the dropped filters' weights and BN channels as
    the optimizer left them (before repr re-applies its masks); at the first step after a restore, the restored
    filters and the kept ones of their layer."""

    name = "test_repr_probe"
    log: dict = {}

    def on_fit_start(self, trainer):
        RePrProbe.log = {"sub_steps": 0, "nonzero": 0, "restored": [], "dropped": []}
        self.last = None

    def on_batch_start(self, trainer):
        if trainer.step:
            return
        repr_ = next(m for m in trainer.methods if m.name == "repr")
        model = trainer.members["model"].model
        if self.last and not repr_.dropped:  # repr restored the filters at this epoch's start
            for conv, filters in self.last.items():
                w = model.get_submodule(conv).weight.detach()
                keep = [f for f in range(w.shape[0]) if f not in filters]
                RePrProbe.log["restored"].append((conv, w[filters].clone(), w[keep].clone()))
        self.last = {n: list(f) for n, f in repr_.dropped.items()} or None
        if repr_.dropped:
            RePrProbe.log["dropped"].append(dict(repr_.dropped))

    def on_after_step(self, trainer):
        repr_ = next(m for m in trainer.methods if m.name == "repr")
        if not repr_.dropped:
            return
        RePrProbe.log["sub_steps"] += 1
        params = dict(trainer.members["model"].model.named_parameters())
        RePrProbe.log["nonzero"] += sum(int((params[n][~m] != 0).sum()) for n, m in repr_.masks.items())



def test_dropped_filters_stay_zero_through_the_subnetwork_phase_and_come_back_orthogonal():
    # a ResNet: a dropped filter before a residual add gets gradients (its BN shift does), so only the masks on
    # gradients and momentum, not the network, hold it at zero
    keys = synthetic(method="test_repr_probe+repr", model="resnet20", width=0.5, epochs=3, momentum=0.9,
                     weight_decay=5e-3, method_options={"repr": {"s1": 1, "s2": 1, "cycles": 1}})
    train(**keys, methods=[RePrProbe], save=False)
    log = RePrProbe.log
    assert log["sub_steps"] == 8 and log["nonzero"] == 0  # weights, BN scale/shift and gradients, every step
    dropped = log["dropped"][0]
    left_out = {"conv1", "layer2.0.downsample.0", "layer3.0.downsample.0"}  # the stem and the projections
    convs = [m.out_channels for n, m in build_model("resnet20", in_channels=1, num_classes=4, width=0.5)
             .named_modules() if isinstance(m, nn.Conv2d) and n not in left_out]
    assert sum(map(len, dropped.values())) == round(0.3 * sum(convs)) and not set(dropped) & left_out
    assert log["restored"]
    for conv, new, kept in log["restored"]:
        n, k = new.flatten(1).double(), kept.flatten(1).double()
        if n.shape[1] >= len(k) + len(n):  # room for the null space (not the 1-channel first conv)
            assert (n @ k.T).abs().max() < 1e-4, conv
        assert new.abs().sum() > 0


def test_generations_schedule_drops_in_the_last_epochs_and_the_last_generation_trains_full():
    keys = synthetic(method="test_repr_probe+repr", epochs=2, generations=3, method_options={"repr": {"s2": 1}})
    result = train(**keys, methods=[RePrProbe], save=False)
    assert len(RePrProbe.log["dropped"]) == 2  # generations 1 and 2 end with a sub-network epoch, 3 does not
    assert RePrProbe.log["sub_steps"] == 16 and RePrProbe.log["nonzero"] == 0
    assert len(result["generations"]) == 3
    assert result["repr"]["schedule"] == {"mode": "generations", "s2": 1, "cycles": 2}
    assert result["repr"]["not_ranked"] == {"conv1": "stem"}  # the small CNN's first conv reads the image
    with pytest.raises(ConfigError, match="leaves no full-network epoch"):
        train(**synthetic(method="repr", epochs=2, generations=2, method_options={"repr": {"s2": 2}}), save=False)
    with pytest.raises(ConfigError, match="repr.s1 applies to repr.schedule=epochs"):  # not ignored in silence
        train(**synthetic(method="repr", epochs=2, generations=2, method_options={"repr": {"s1": 1}}), save=False)


def test_a_network_without_convolutions_is_refused_at_the_start(tmp_path):
    def mlp():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))

    with pytest.raises(ConfigError, match="method=repr needs a convolutional network") as err:
        train(**synthetic(method="repr", epochs=3), module=mlp, out=tmp_path / "run")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_repr_resumes_in_the_middle_of_the_subnetwork_phase_bit_identically(tmp_path):
    keys = synthetic(method="repr+test_crash", epochs=3, method_options={"repr": {"s1": 1, "s2": 1}})
    full = train(**keys, methods=[Crash], out=tmp_path / "full")
    CRASH["at"] = (0, 1, 4)  # half-way through the sub-network epoch
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(**keys, methods=[Crash], out=tmp_path / "crashed")
    resumed = resume(tmp_path / "crashed", methods=[Crash], progress="none")
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "crashed"))
    assert metric_rows(tmp_path / "full") == metric_rows(tmp_path / "crashed")
    assert resumed["generations"] == full["generations"] and resumed["repr"] == full["repr"]
    assert full["repr"]["cycles"][0]["restore_epoch"] == 3 and full["generations"][0]["model"]["repr_cycles_done"] == 1
    assert full["repr"]["schedule"] == {"mode": "epochs", "s1": 1, "s2": 1, "cycles": 1, "cycles_asked": 3,
                                        "sub_network_epochs": [[2, 2]]}
