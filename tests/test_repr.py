"""RePr (Prakash et al., CVPR 2019): the orthogonality rank against the paper's formula by hand, the global ranking,
dropped filters held at zero through the sub-network phase, restored filters orthogonal to the kept ones, cycles,
refusals, resume in the middle of a phase."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.repr import filter_orthogonality, orthogonal_reinit, rank_filters, repr_plan
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


def test_cycle_plan_scales_the_ke_papers_setting():
    assert repr_plan(200) == [(50, 60), (110, 120), (170, 180)]  # S1=50, S2=10, 3 cycles, then full to 200
    assert repr_plan(5, 1, 1, 3) == [(1, 2), (3, 4)]
    with pytest.raises(ConfigError, match="leaves no room for one cycle"):
        repr_plan(2, 1, 1)


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
    convs = [m.out_channels for m in build_model("resnet20", in_channels=1, num_classes=4, width=0.5).modules()
             if isinstance(m, nn.Conv2d)]
    assert sum(map(len, dropped.values())) == round(0.3 * sum(convs))
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
    with pytest.raises(ConfigError, match="leaves no full-network epoch"):
        train(**synthetic(method="repr", epochs=2, generations=2, method_options={"repr": {"s2": 2}}), save=False)


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
