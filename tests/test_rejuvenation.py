"""Neural Rejuvenation (Qiao et al., CVPR 2019): monitor, sparsity, rebuild, mixed-neuron schemes, method, CLI.

References are computed another way: a hand-counted utilization, the autograd of the L1 term, the dense network
with the dead channels zeroed, Eq. 9 written out by hand, the cost counted from the rebuilt model's own weights,
and an uninterrupted run for kill/resume.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resprout.engine.method import Method
from resprout.engine.optim import Schedule
from resprout.errors import ConfigError
from resprout.methods.rejuvenation import (NeuralRejuvenation, add_l1_subgradient, cross_attention, cross_masks,
                                           install_cross_attention, l1_penalty, labels_of, mask_gradients,
                                           next_lambda, real_cost, reinit_split, rejuvenation_plan, rescale,
                                           solve_expansion, topology, utilization, zero_cross)
from resprout.methods.rejuvenation.schedule import RejuvenationSchedule
from resprout.methods.rejuvenation.sparsity import soft_threshold
from resprout.models import build_model
from resprout.run import resume, train
from resprout.surgery.channels import example_input
from resprout.surgery.resize import resize
from tests.conftest import PYTHON, cli_env, synthetic
from tests.test_trainer import CRASH, Crash, assert_same_weights, weights

SHAPE = (1, 8, 8)


class Tiny(nn.Module):
    """conv(1->4)-BN-ReLU, conv(4->6)-BN-ReLU, global average pool, linear(6->3): small enough to count by hand."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def randomize(model: nn.Module, seed: int = 1) -> nn.Module:
    """Random BN statistics, scales in (0.25, 0.75) and shifts, so that equivalence tests can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.25)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def kill(model: nn.Module, topo, every: int = 3, offset: int = 0) -> None:
    """Make every ``every``-th channel of each judged unit dead: scale and shift 0 (so removing it is exact)."""
    with torch.no_grad():
        for key in topo.monitored():
            for b in topo.units[key].bns:
                bn = model.get_submodule(b)
                bn.weight[offset::every] = 0
                bn.bias[offset::every] = 0


def close(a, b, tol=1e-5):
    scale = b.abs().max().clamp(min=1)
    return a.shape == b.shape and bool(((a - b).abs() / scale).max() <= tol)


def x_batch(shape=SHAPE, n=6):
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(2))


# -- monitor -----------------------------------------------------------------------------------------------------
def test_utilization_of_a_hand_counted_net_is_exact_by_params_and_flops():
    model = Tiny()
    with torch.no_grad():
        model.b1.weight.copy_(torch.tensor([1.0, 0.005, 0.5, 0.0]))  # live: 0, 2 (0.005 < 0.01 * 1)
        model.b2.weight.copy_(torch.tensor([1.0, 1.0, 0.0, 0.0, -1.0, 0.001]))  # live: 0, 1, 4 (sign ignored)
    topo = topology(model, SHAPE)
    u = utilization(model, topo)
    assert u["live"]["c1"].tolist() == [True, False, True, False]
    assert u["live"]["c2"].tolist() == [True, True, False, False, True, False]
    # conv1 1*2*9 of 1*4*9, conv2 2*3*9 of 4*6*9, fc 3*3 of 6*3
    assert (u["used"], u["cost"]) == (18 + 54 + 9, 36 + 216 + 18) and u["r"] == 81 / 270
    f = utilization(model, topo, resource="flops")  # 8x8 outputs of the convs, one row of the fc
    assert (f["used"], f["cost"]) == (18 * 64 + 54 * 64 + 9, 36 * 64 + 216 * 64 + 18)
    with torch.no_grad():  # layer 1 dead whole (max|gamma| < 1e-3): layer 2 has no live input, so it is dead too
        model.b1.weight.copy_(torch.tensor([5e-4, 1e-4, 0.0, 2e-4]))
    u = utilization(model, topo)
    assert not u["live"]["c1"].any() and not u["live"]["c2"].any() and u["used"] == 0


def test_main_stream_of_a_residual_net_is_excluded_by_default_and_penalized_only_when_included():
    model = build_model("resnet20", in_channels=1, num_classes=10)
    topo = topology(model, SHAPE)
    main = [k for k in topo.order if topo.units[k].mainstream]
    assert main == ["conv1", "layer2.0.downsample.0", "layer3.0.downsample.0"]  # the three residual streams
    assert topo.units["conv1"].writers == ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    assert topo.monitored() == [k for k in topo.order if k not in main] and len(topo.monitored()) == 9
    with torch.no_grad():
        model.bn1.weight[0] = 0  # channel 0 of the stem's BN, a main-stream writer: the blocks still write it
    assert utilization(model, topo, mainstream="include")["live"]["conv1"][0]
    with torch.no_grad():
        for b in topo.units["conv1"].bns:
            model.get_submodule(b).weight[0] = 0  # dead in every writer of the stream
    assert not utilization(model, topo, mainstream="include")["live"]["conv1"][0]
    assert utilization(model, topo)["live"]["conv1"].all()  # excluded (the default): always live
    assert set(topo.monitored("include")) == set(topo.order)


def test_a_conv_without_batch_norm_is_refused_naming_it():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="layer '0' \\(Conv2d\\) is not followed by a batch norm") as info:
        topology(net, SHAPE)
    assert "\n" not in str(info.value)


# -- sparsity ----------------------------------------------------------------------------------------------------
def test_l1_subgradient_equals_autograd_of_the_penalty_and_soft_threshold_reaches_zero():
    model = randomize(Tiny())
    bns = [model.b1, model.b2]
    with torch.no_grad():
        model.b1.weight[1] = -0.3
    l1_penalty(bns, 0.02).backward()
    expected = [bn.weight.grad.clone() for bn in bns]
    for bn in bns:
        bn.weight.grad = torch.ones_like(bn.weight)
    add_l1_subgradient(bns, 0.02)
    for bn, e in zip(bns, expected):
        assert torch.allclose(bn.weight.grad, 1 + e)
    before = model.b1.weight.detach().clone()
    soft_threshold(bns, 0.3)
    assert torch.equal(model.b1.weight, torch.sign(before) * (before.abs() - 0.3).clamp(min=0))


def test_adaptive_lambda_keeps_when_r_fell_enough_and_raises_otherwise():
    assert next_lambda(0.0, 0.95, 1.0) == 0.0  # fell by 0.05 > 0.01: kept
    assert next_lambda(1e-4, 0.995, 1.0) == pytest.approx(1.5e-4)  # fell by only 0.005: raised by 5e-5
    assert next_lambda(1e-4, 0.99, 1.0) == pytest.approx(1.5e-4)  # exactly Delta r is not "fell by Delta r"
    assert next_lambda(0.0, 0.9, 1.0, delta_r=0.2, delta_lambda=1.0) == 1.0


# -- rebuild -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnn", "resnet20"])
@pytest.mark.parametrize("target", [1.0, 0.5])
@pytest.mark.parametrize("separate", [False, True])
def test_rebuilt_cost_counted_from_the_new_weights_is_within_one_percent_of_the_target(name, target, separate):
    model = randomize(build_model(name, in_channels=1, num_classes=10, **({"width": 0.5} if name != "resnet20"
                                                                            else {})))
    topo = topology(model, SHAPE)
    kill(model, topo, every=2)
    u = utilization(model, topo)
    for resource in ("params", "flops") if name == "cnn" else ("params",):
        cost = utilization(model, topo, resource=resource)["cost"]
        sol = solve_expansion(topo, u["live"], target * cost, judged=topo.monitored(), separate=separate,
                              resource=resource)
        new = resize(model, rejuvenation_plan(model, topo, u["live"], sol["split"]), example_input(SHAPE)).model
        topo2 = topology(new, SHAPE)
        counted = real_cost(new, topo2, labels_of(topo2, sol["split"]) if separate else None, resource)
        assert counted == sol["cost"]
        assert abs(counted / (target * cost) - 1) <= 0.01
        if target == 1.0:  # the freed budget is given back: wider than the live widths
            assert all(s + r > s for s, r in sol["split"].values())


@pytest.mark.parametrize("name", ["vgg11", "resnet20"])
@pytest.mark.parametrize("scheme", ["nr", "cr", "ca"])
def test_right_after_a_rejuvenation_the_logits_equal_the_ones_before(name, scheme):
    model = randomize(build_model(name, in_channels=1, num_classes=10, **({"width": 0.25} if name == "vgg11"
                                                                            else {})))
    topo = topology(model, SHAPE)
    kill(model, topo, every=3, offset=1)
    x = x_batch()
    with torch.no_grad():
        before = model(x)
    u = utilization(model, topo)
    sol = solve_expansion(topo, u["live"], u["cost"], judged=topo.monitored(), separate=scheme == "cr")
    plan = rejuvenation_plan(model, topo, u["live"], sol["split"])
    new = resize(model, plan, example_input(SHAPE)).model
    topo2 = topology(new, SHAPE)
    labels = labels_of(topo2, sol["split"])
    reinit_split(new, topo2, sol["split"], 0.5)
    masks = cross_masks(new, topo2, labels)
    if scheme == "ca":
        install_cross_attention(new, masks)
    new.eval()
    with torch.no_grad():
        after = new(x)
    for key in topo.monitored():  # dead channels really removed, new ones really added
        assert -1 in plan[key] and set(range(topo.units[key].channels)) - set(plan[key])
    assert close(after, before)
    # survivors first; W_S->S kept, W_R->S and W_S->R zero, W_R->R fresh, R's BN scale reset
    key = topo.monitored()[1]
    writer = topo2.units[key].writers[0]
    s, r = sol["split"][key]
    w_new = new.get_submodule(writer).weight
    prev = next(k for k, _ in next(lay for lay in topo2.layers if lay.module == writer).inputs)
    s_in = sol["split"][prev][0] if prev in sol["split"] else w_new.shape[1]
    old_rows, old_cols = plan[key][:s], plan[prev][:s_in] if prev in plan else list(range(s_in))
    assert torch.equal(w_new[:s, :s_in], model.get_submodule(writer).weight[old_rows][:, old_cols])
    if prev in sol["split"]:
        assert (w_new[:s, s_in:] == 0).all() and (w_new[s:, :s_in] == 0).all() and w_new[s:, s_in:].abs().sum() > 0
    bn = new.get_submodule(topo2.units[key].bns[0])
    assert (bn.weight[s:] == 0.5).all() and (bn.running_var[s:] == 1).all() and bn.weight.shape[0] == s + r


def test_nr_ca_with_zero_cross_weights_equals_nr_cr_and_follows_eq_9_otherwise():
    model = randomize(build_model("cnn", in_channels=1, num_classes=10, width=0.5))
    topo = topology(model, SHAPE)
    labels = {k: [0] * (topo.units[k].channels // 2) + [1] * (topo.units[k].channels - topo.units[k].channels // 2)
              for k in topo.order}
    masks = cross_masks(model, topo, labels)
    assert set(masks) == {"conv2", "conv3"}  # conv1 reads the image, fc writes the classes: no cross blocks
    x = x_batch()
    ca = copy.deepcopy(model)
    install_cross_attention(ca, masks)
    with torch.no_grad():
        free = ca(x)  # random cross weights: attention changes the output
    assert not close(free, model(x).detach())
    cr = copy.deepcopy(model)
    zero_cross(cr, masks)
    zero_cross(ca, masks)
    with torch.no_grad():
        assert torch.equal(ca(x), cr(x))
    # Eq. 9/10 by hand on conv2 with its own cross weights: S_out = W_SS*S + 2 sig(W_SS*S) (W_RS*R)
    conv = copy.deepcopy(model.conv2)
    h = torch.randn(2, conv.in_channels, 8, 8)
    m = masks["conv2"]
    own, cross = F.conv2d(h, conv.weight * (1 - m), padding=1), F.conv2d(h, conv.weight * m, padding=1)
    install_cross_attention(nn.Sequential(conv), {"0": m})
    assert torch.allclose(conv(h), own + 2 * torch.sigmoid(own) * cross, atol=1e-6)
    assert torch.equal(cross_attention(own, torch.zeros_like(own)), own)


def test_cr_gradient_mask_keeps_cross_weights_zero_through_sgd_with_momentum_and_decay():
    model = randomize(build_model("cnn", in_channels=1, num_classes=4, width=0.5)).train()
    topo = topology(model, SHAPE)
    labels = {k: [0, 1] * (topo.units[k].channels // 2) for k in topo.order}
    masks = cross_masks(model, topo, labels)
    zero_cross(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x_batch()), torch.tensor([0, 1, 2, 3, 0, 1])).backward()
        mask_gradients(model, masks)
        opt.step()
    for path, m in masks.items():
        w = model.get_submodule(path).weight
        assert (w[m.bool()] == 0).all() and (w[~m.bool()] != 0).any()


@pytest.mark.parametrize("name", ["vgg11", "resnet20"])
def test_neural_rescaling_leaves_eval_outputs_unchanged(name):
    model = randomize(build_model(name, in_channels=1, num_classes=10, **({"width": 0.25} if name == "vgg11"
                                                                            else {})))
    topo = topology(model, SHAPE)
    x = x_batch()
    with torch.no_grad():
        before = model(x)
    gammas = {k: model.get_submodule(topo.units[k].bns[0]).weight.detach().clone() for k in topo.order}
    done = rescale(model, topo, None, 1.0)
    with torch.no_grad():
        after = model(x)
    assert close(after, before)
    assert done and all(v > 0 for v in done.values())
    for key in done:  # |gamma'| = max(|gamma|, gamma_0): every scale was below 1, now all are 1
        g = model.get_submodule(topo.units[key].bns[0]).weight
        assert torch.allclose(g.abs(), torch.ones_like(g)) and not torch.allclose(gammas[key], g)
    if name == "resnet20":  # block outputs feed the residual add: not exactly compensable, left alone
        assert set(done) == {k for k in topo.order if not topo.units[k].mainstream}


# -- the method in runs -------------------------------------------------------------------------------------------
NR_FAST = {"every": 0.125, "sparsity": "fixed", "lam": 0.0, "threshold": 0.9}  # a check after every step


class Kill(Method):
    """Stands in for the sparsity phase: at the given (epoch, step) zero scale and shift of every third channel of
    every BN, so the next check (NR runs after this method) sees r < T_r, whatever the training did."""

    name = "test_nr_kill"
    at: tuple = ((0, 3), (1, 4))

    def on_batch_end(self, trainer):
        if (trainer.epoch, trainer.step) in Kill.at:
            with torch.no_grad():
                for m in trainer.members["model"].model.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.weight[1::3] = 0
                        m.bias[1::3] = 0



class Capture(NeuralRejuvenation):
    """Records eval-mode logits on a fixed batch right before (dead channels zeroed) and after each rejuvenation."""

    name = "nr"
    seen: list = []

    def rejuvenate(self, trainer, u, epoch):
        model = self._model(trainer)
        x = trainer.train_loader.batch(0, 0, 0)[0][:16]
        topo = self.topo(trainer)
        with torch.no_grad():
            for key in topo.monitored(self.options.mainstream):
                for b in topo.units[key].bns:
                    bn = model.get_submodule(b)
                    dead = ~u["live"][key]
                    bn.weight[dead] = 0
                    bn.bias[dead] = 0
            model.eval()
            before = model(x)
        record = super().rejuvenate(trainer, u, epoch)
        model = self._model(trainer)
        with torch.no_grad():
            model.eval()
            Capture.seen.append((before, model(x), record))
            model.train()
        return record


@pytest.mark.parametrize("scheme", ["cr", "ca"])
def test_a_run_rejuvenates_twice_keeping_its_function_and_its_cost(scheme):
    Capture.seen = []
    res = train(**synthetic(method="test_nr_kill+nr", epochs=2,
                            method_options={"nr": {**NR_FAST, "scheme": scheme, "rejuvenations": 2}}),
                methods=[Kill, Capture], save=False)
    rep = res["rejuvenation"]
    assert rep["count"] == 2 == len(Capture.seen)
    for before, after, rec in Capture.seen:
        assert close(after, before)
        assert rec["utilization_before"] < 0.9 and abs(rec["after_vs_target"] - 1) <= 0.01
        assert rec["cost_after_counted"] == rec["cost_after"]
        assert sum(rec["widths_after"].values()) > sum(rec["live_before"].values())
    assert [round(rec["epoch"] * 8) for rec in rep["rejuvenations"]] == [4, 13]  # the checks right after the kills
    assert rep["rejuvenations"][1]["widths_before"] == rep["rejuvenations"][0]["widths_after"]


def test_adaptive_lambda_in_a_run_follows_the_rule_from_its_own_history():
    keys = synthetic(method="nr", epochs=2, method_options={"nr": {"every": 0.25, "lam_step": 0.3, "l1": "proximal",
                                                                   "threshold": 0.05}})
    rep = train(**keys, save=False)["rejuvenation"]
    hist = rep["utilization"]
    assert hist[0]["lambda"] == 0.0 and len(hist) == 8
    r_prev = 1.0
    for h, nxt in zip(hist, hist[1:]):
        if rep["count"] and nxt["epoch"] > rep["rejuvenations"][0]["epoch"]:
            break
        assert nxt["lambda"] == pytest.approx(next_lambda(h["lambda"], h["r"], r_prev, delta_lambda=0.3))
        r_prev = h["r"]


@pytest.mark.parametrize("kind, warmup", [("cosine", 0.0), ("cosine", 1.0), ("step", 0.0)])
def test_held_schedule_is_one_then_the_run_schedule_restarted_over_the_remaining_epochs(kind, warmup):
    inner = Schedule(kind, 10, warmup, (5.0, 7.5), 0.1)
    for restart in (None, 4.0):
        sched = RejuvenationSchedule(inner, restart, hold=0.3)
        start = 3.0 if restart is None else 4.0
        for t in [x / 4 for x in range(40)]:
            if t < warmup:
                expect = inner.factor(t, 0.25)
            elif t < start:
                expect = 1.0
            elif kind == "cosine":
                expect = 0.5 * (1 + math.cos(math.pi * (t - start) / (10 - start)))
            else:  # the milestones at 50% and 75% of the remaining epochs
                expect = 0.1 ** ((t - start >= 0.5 * (10 - start)) + (t - start >= 0.75 * (10 - start)))
            assert sched.factor(t, 0.25) == pytest.approx(expect), (restart, t)


class LR(Method):
    """Records the learning rate every step was taken with."""

    name = "test_nr_lr"
    seen: list = []

    def on_after_step(self, trainer):
        LR.seen.append((trainer.epoch, trainer.step, trainer.members["model"].optimizer.param_groups[0]["lr"]))



@pytest.mark.parametrize("lr", ["hold", "run"])
def test_in_a_run_the_rate_is_held_until_the_rejuvenation_and_then_restarted(lr):
    LR.seen = []
    res = train(**synthetic(method="test_nr_kill+nr+test_nr_lr", epochs=2,
                            method_options={"nr": {**NR_FAST, "lr": lr}}), methods=[Kill, LR], save=False)
    start = res["rejuvenation"]["rejuvenations"][0]["epoch"]
    assert start == 0.5  # the check after the kill at step 3
    for epoch, step, rate in LR.seen:
        t = epoch + step / 8
        if lr == "run":
            expect = 0.5 * (1 + math.cos(math.pi * t / 2))
        else:
            expect = 1.0 if t < start else 0.5 * (1 + math.cos(math.pi * (t - start) / (2 - start)))
        assert rate == pytest.approx(0.05 * expect), (epoch, step)
    assert len(LR.seen) == 16


def test_ablation_modes_ip_fs_and_bl_ca():
    base = synthetic(epochs=2)
    ip = train(**base, method="test_nr_kill+nr", method_options={"nr": {**NR_FAST, "mode": "ip"}},
               methods=[Kill], save=False)["rejuvenation"]
    rec = ip["rejuvenations"][0]
    assert rec["widths_after"] == rec["widths_before"] and rec["alpha"] == 1.0  # no reallocation
    fs = train(**base, method="test_nr_kill+nr", method_options={"nr": {**NR_FAST, "mode": "fs"}},
               methods=[Kill], save=False)["rejuvenation"]
    assert fs["count"] == 1 and fs["mode"] == "fs"  # its re-initialization: the next test
    bl = train(**base, method="nr", method_options={"nr": {"mode": "bl", "scheme": "ca"}}, save=False)
    assert bl["rejuvenation"]["count"] == 0 and all(h["lambda"] == 0 for h in bl["rejuvenation"]["utilization"])


def test_fs_reinitializes_every_weight_of_the_found_architecture():
    seen = {}

    class FS(NeuralRejuvenation):
        name = "nr"

        def rejuvenate(self, trainer, u, epoch):
            old = {k: v.clone() for k, v in self._model(trainer).state_dict().items()}
            rec = super().rejuvenate(trainer, u, epoch)
            seen["old"], seen["new"] = old, self._model(trainer).state_dict()
            return rec

    train(**synthetic(epochs=1, method="test_nr_kill+nr", method_options={"nr": {**NR_FAST, "mode": "fs"}}),
          methods=[Kill, FS], save=False)
    w_old, w_new = seen["old"]["conv2.weight"], seen["new"]["conv2.weight"]
    n = min(w_old.shape[0], w_new.shape[0])
    assert not torch.isclose(w_new[:n, :min(w_old.shape[1], w_new.shape[1])],
                             w_old[:n, :min(w_old.shape[1], w_new.shape[1])]).any()


@pytest.mark.slow
def test_kill_and_resume_after_a_rejuvenation_is_bit_identical(tmp_path):
    keys = synthetic(method="test_nr_kill+nr+test_crash", epochs=3,
                     method_options={"nr": {**NR_FAST, "scheme": "ca", "rescale": True}})
    full = train(**keys, methods=[Kill, Crash], out=tmp_path / "full")
    assert full["rejuvenation"]["count"] == 1 and full["rejuvenation"]["rejuvenations"][0]["epoch"] < 2
    CRASH["at"] = (0, 2, 3)  # epoch 3, after the rejuvenation and its checkpoint
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(**keys, methods=[Kill, Crash], out=tmp_path / "crashed")
    resumed = resume(tmp_path / "crashed", methods=[Kill, Crash], progress="none")
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "crashed"))
    assert resumed["final"] == full["final"] and resumed["rejuvenation"] == full["rejuvenation"]
    assert (tmp_path / "full" / "rejuvenation-utilization.png").is_file()
    assert (tmp_path / "full" / "rejuvenation-widths.png").is_file()


# -- CLI -----------------------------------------------------------------------------------------------------------
def run_cli(tmp_path, *args):
    return subprocess.run([PYTHON, "-m", "resprout", "train", *args], capture_output=True, text=True,
                          env=cli_env(tmp_path), cwd=tmp_path, timeout=120)


@pytest.mark.slow
def test_cli_reports_the_rejuvenation_in_json(tmp_path):
    out = run_cli(tmp_path, "method=nr", "nr.every=0.125", "nr.l1=proximal", "nr.sparsity=fixed", "nr.lam=2",
                  "nr.threshold=0.999", "data=digits", "model=cnn", "model.width=0.25", "epochs=1", "threads=1",
                  "progress=none", "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)["rejuvenation"]
    rec = rep["rejuvenations"][0]
    assert {"epoch", "utilization_before", "cost_before", "cost_after", "target", "widths_before",
            "widths_after"} <= set(rec)
    assert (tmp_path / json.loads(out.stdout)["run_dir"] / "rejuvenation-widths.png").is_file()


@pytest.mark.parametrize("bad, says", [(["nr.target=1.5"], "nr.target"), (["nr.scheme=xx"], "nr.scheme"),
                                       (["nr.target=0"], "nr.target"),
                                       (["model=wrn-16-4"], "layer 'layer1.0.conv2' (Conv2d) is not followed by a "
                                                            "batch norm")])
def test_cli_refuses_bad_input_in_one_line_with_exit_2(bad, says, capsys, tmp_path):
    from resprout.cli import main

    rc = main(["train", "method=nr", "data=digits", "model=cnn", "epochs=1", "progress=none", *bad])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and err.strip().count("\n") == 0, err
    assert not list((tmp_path / "runs").glob("*/checkpoint.pt"))  # refused before training: nothing written
