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
                                           model_counts, next_lambda, per_iteration, ramp_stretch, real_cost,
                                           reinit_split, rejuvenation_plan, rescale, solve_expansion, topology,
                                           utilization, window_end, zero_cross)
from resprout.methods.rejuvenation.monitor import bridges, cut_at
from resprout.methods.rejuvenation.schedule import RejuvenationSchedule
from resprout.methods.rejuvenation.sparsity import proximal_amount, soft_threshold
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


def test_a_layer_dead_whole_on_the_only_path_cuts_the_network_a_dead_branch_does_not():
    model = Tiny()
    topo = topology(model, SHAPE)
    assert cut_at(topo, utilization(model, topo)["live"]) is None
    with torch.no_grad():
        model.b1.weight.fill_(5e-4)  # layer 1 dead whole: layer 2 has no live input, the classifier nothing
    assert cut_at(topo, utilization(model, topo)["live"]) == "fc"
    net = build_model("resnet20", in_channels=1, num_classes=10)
    topo = topology(net, SHAPE)
    with torch.no_grad():
        net.layer1[0].bn1.weight.zero_()  # a residual branch dead whole: the main stream still feeds the classifier
    live = utilization(net, topo)["live"]
    assert not live["layer1.0.conv1"].any() and cut_at(topo, live) is None


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


@pytest.mark.parametrize("iterations", [8, 23, 5005])
def test_lambda_per_epoch_moves_a_scale_by_lr_times_lambda_in_one_epoch_whatever_the_iterations(iterations):
    """The conversion (lambda per epoch -> per iteration) against its formula and against an epoch of plain SGD: a
    scale with no data gradient moves by ``lr * lambda_epoch`` in ``iterations`` steps, on any dataset size."""
    lam_epoch = 5e-5 * 5005  # the paper's Delta lambda: 5e-5 per iteration at ImageNet's 5,005 iterations per epoch
    assert per_iteration(lam_epoch, "epoch", iterations) == pytest.approx(lam_epoch / iterations)
    assert per_iteration(lam_epoch, "epoch", 5005) == pytest.approx(5e-5)
    assert per_iteration(5e-5, "iteration", iterations) == 5e-5
    bn = nn.BatchNorm2d(3, dtype=torch.float64)  # 5,005 float32 steps would round off the last digits
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -1.0, 0.5]))
    opt = torch.optim.SGD([bn.weight], lr=0.1)
    for _ in range(iterations):
        opt.zero_grad()
        add_l1_subgradient([bn], per_iteration(lam_epoch, "epoch", iterations))
        opt.step()
    expected = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64) - 0.1 * lam_epoch * torch.tensor([1.0, -1.0, 1.0])
    assert torch.allclose(bn.weight.detach(), expected.double(), atol=1e-9)


def test_proximal_step_moves_a_scale_as_far_as_the_subgradient_does_under_momentum():
    """The proximal amount against torch's own SGD with momentum fed the sub-gradient: its steady step."""
    w = torch.nn.Parameter(torch.tensor([5.0]))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    for _ in range(300):
        before = float(w.detach())
        opt.zero_grad()
        w.grad = torch.full_like(w, 0.02)
        opt.step()
    assert before - float(w.detach()) == pytest.approx(proximal_amount(0.1, 0.02, 0.9), rel=1e-6)
    assert proximal_amount(0.1, 0.02) == pytest.approx(0.1 * 0.02)


def test_sparsity_window_and_ramp_stretch_by_hand():
    assert window_end(0.0, 6, 0.5) == 3.0 and window_end(2.0, 6, 0.5) == 4.0  # half of what remains
    assert ramp_stretch("window", 20, 0.0, 3.0) == pytest.approx(20 / 3)  # the paper's 20 epochs in 3
    assert ramp_stretch("window", 20, 10.0, 50.0) == 1.0  # a long window follows the paper epoch by epoch
    assert ramp_stretch("epoch", 20, 0.0, 3.0) == 1.0


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


def test_a_layer_dead_whole_on_the_only_path_is_rebuilt_at_its_width_all_new():
    """alpha * 0 channels would cut Tiny's chain: layer 1 dead whole (and layer 2, fed by nothing) keep their widths
    with every channel new, whatever the rate; the logits stay those of the dead network (the new channels' readers
    start at zero)."""
    model = randomize(Tiny())
    with torch.no_grad():
        model.b1.weight.fill_(5e-4)
    topo = topology(model, SHAPE)
    u = utilization(model, topo)
    assert bridges(topo) == {"c1", "c2"} and u["used"] == 0
    sol = solve_expansion(topo, u["live"], u["cost"], judged=topo.monitored(), separate=True,
                          reinit_dead=bridges(topo))
    assert sol["split"] == {"c1": (0, 4), "c2": (0, 6)} and sol["cost"] == u["cost"]
    new = resize(model, rejuvenation_plan(model, topo, u["live"], sol["split"]), example_input(SHAPE)).model
    reinit_split(new, topology(new, SHAPE), sol["split"], 1.0)
    with torch.no_grad():  # the dead network (scales and shifts of the dead channels zeroed) gives the fc's bias
        assert close(new.eval()(x_batch()), model.fc.bias.expand(6, 3))
    assert not torch.equal(new.c1.weight, model.c1.weight) and (new.b1.weight == 1).all()


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


def test_paper_and_real_counts_of_a_hand_counted_net():
    """Tiny by hand: conv1 1->4 3x3 and conv2 4->6 3x3 on 8x8 outputs, fc 6->3 (bias), two BNs. S/R labels
    [S S R R] and [S S S R R R]: the paper counts conv2's S->S and R->R blocks only (2*3 + 2*3 pairs)."""
    model = Tiny()
    topo = topology(model, SHAPE)
    dense = {"paper_params": 36 + 216 + 18, "paper_macs": 36 * 64 + 216 * 64 + 18, "weights": 36 + 216 + 18,
             "params": 36 + 216 + 18 + 3 + 2 * (4 + 6), "macs": 36 * 64 + 216 * 64 + 18}
    got = model_counts(model, topo, None, SHAPE)
    assert {k: got[k] for k in dense} == dense and got["macs_all"] == dense["macs"] + (4 + 6) * 64  # BN
    labels = {"c1": [0, 0, 1, 1], "c2": [0, 0, 0, 1, 1, 1]}
    cr = model_counts(model, topo, labels, SHAPE)
    assert (cr["paper_params"], cr["paper_macs"]) == (36 + 12 * 9 + 18, 36 * 64 + 12 * 9 * 64 + 18)
    assert {k: cr[k] for k in ("weights", "params", "macs")} == {k: dense[k] for k in ("weights", "params", "macs")}
    install_cross_attention(model, cross_masks(model, topo, labels))  # CA: conv2 once more, its cross blocks only,
    ca = model_counts(model, topo, labels, SHAPE)                    # as a dense convolution
    assert ca["macs"] == dense["macs"] + 216 * 64 and ca["weights"] == dense["weights"]


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
# a check after every step, no penalty, a window as long as the run
NR_FAST = {"every": 0.125, "sparsity": "fixed", "lam": 0.0, "threshold": 0.9, "hold": 1.0}


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

    def rejuvenate(self, trainer, u, epoch, **kw):
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
        record = super().rejuvenate(trainer, u, epoch, **kw)
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
    """Delta lambda and Delta r are per epoch of the ramp: a check every quarter epoch adds ``lam_step * stretch *
    0.25`` to lambda per epoch unless r fell by ``r_step * stretch * 0.25``; the iteration's lambda is that over the
    8 iterations of an epoch. Written out by hand from the run's own history."""
    opts = {"every": 0.25, "lam_step": 0.5, "threshold": 0.05, "hold": 1.0, "ramp": "window", "ramp_epochs": 6.0}
    rep = train(**synthetic(method="nr", epochs=2, nr=opts), save=False)["rejuvenation"]
    hist = rep["utilization"]
    assert len(hist) == 8
    stretch = 6.0 / 2.0  # the paper's 6 epochs of ramp in a window of 2
    step, fall = 0.5 * stretch * 0.25, 0.01 * stretch * 0.25
    lam, r_prev = 0.0, 1.0
    for h in hist:
        assert h["lambda_epoch"] == pytest.approx(lam) and h["lambda"] == pytest.approx(lam / 8)
        if h["r"] < 0.05 or h["r"] == 0:  # a rejuvenation (or nothing live): lambda back to 0, the window closed
            break
        lam = lam if h["r"] < r_prev - fall else lam + step
        r_prev = h["r"]
    assert hist[1]["lambda_epoch"] == pytest.approx(step)  # raised at the first check (r did not fall)


@pytest.mark.parametrize("kind, warmup", [("cosine", 0.0), ("cosine", 1.0), ("step", 0.0)])
def test_held_schedule_is_one_then_the_run_schedule_restarted_over_the_remaining_epochs(kind, warmup):
    inner = Schedule(kind, 10, warmup, (5.0, 7.5), 0.1)
    for start in (3.0, 4.0):
        sched = RejuvenationSchedule(inner, start)
        for t in [x / 4 for x in range(40)]:
            if t < warmup:
                expect = inner.factor(t, 0.25)
            elif t < start:
                expect = 1.0
            elif kind == "cosine":
                expect = 0.5 * (1 + math.cos(math.pi * (t - start) / (10 - start)))
            else:  # the milestones at 50% and 75% of the remaining epochs
                expect = 0.1 ** ((t - start >= 0.5 * (10 - start)) + (t - start >= 0.75 * (10 - start)))
            assert sched.factor(t, 0.25) == pytest.approx(expect), (start, t)


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
    ip = train(**base, method="test_nr_kill+nr", method_options={"nr": {**NR_FAST, "mode": "ip", "scheme": "nr"}},
               methods=[Kill], save=False)["rejuvenation"]
    rec = ip["rejuvenations"][0]
    assert rec["widths_after"] == rec["widths_before"] and rec["alpha"] == 1.0  # no reallocation
    assert rec["cost_after"] == rec["cost_before"] == rec["counts_after"]["weights"]  # equal cost, really
    fs = train(**base, method="test_nr_kill+nr", method_options={"nr": {**NR_FAST, "mode": "fs"}},
               methods=[Kill], save=False)["rejuvenation"]
    assert fs["count"] == 1 and fs["mode"] == "fs"  # its re-initialization: the next test
    bl = train(**base, method="nr", method_options={"nr": {"mode": "bl", "scheme": "ca"}}, save=False)
    assert bl["rejuvenation"]["count"] == 0 and all(h["lambda"] == 0 for h in bl["rejuvenation"]["utilization"])


def test_fs_reinitializes_every_weight_of_the_found_architecture():
    seen = {}

    class FS(NeuralRejuvenation):
        name = "nr"

        def rejuvenate(self, trainer, u, epoch, **kw):
            old = {k: v.clone() for k, v in self._model(trainer).state_dict().items()}
            rec = super().rejuvenate(trainer, u, epoch, **kw)
            seen["old"], seen["new"] = old, self._model(trainer).state_dict()
            return rec

    train(**synthetic(epochs=1, method="test_nr_kill+nr", method_options={"nr": {**NR_FAST, "mode": "fs"}}),
          methods=[Kill, FS], save=False)
    w_old, w_new = seen["old"]["conv2.weight"], seen["new"]["conv2.weight"]
    n = min(w_old.shape[0], w_new.shape[0])
    assert not torch.isclose(w_new[:n, :min(w_old.shape[1], w_new.shape[1])],
                             w_old[:n, :min(w_old.shape[1], w_new.shape[1])]).any()


def spread_cnn() -> nn.Module:
    """The small CNN with its BN scales spread from 0.05 to 1 in every layer (the differences a trained network's
    scales have; at init they are all 1)."""
    net = build_model("cnn", in_channels=1, num_classes=4, width=0.5)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.linspace(0.05, 1.0, m.num_features))
    return net


@pytest.mark.parametrize("seed", [0, 1])
def test_at_the_defaults_a_run_rejuvenates_within_its_sparsity_window_by_construction(seed):
    """The window (half the epochs) ends with a rebuild of whatever died in it (``nr.deadline=rebuild``). If r never
    fell, lambda would rise by Delta lambda x 0.25 at every quarter-epoch check; by the window's end the L1 term alone
    would then have moved a scale by ``lr / (1 - momentum) x`` the sum of the iterations' lambdas, computed here by
    hand from the schedule. It exceeds the smaller scales of this network (0.05 and up), so some die inside the
    window whatever the data does for the others, and the run rejuvenates inside it: by T_r, or at the deadline."""
    epochs, lr, momentum, iterations = 4, 0.05, 0.9, 8  # synthetic(): 256 images, batch 32
    window = 0.5 * epochs
    per_check = 5e-5 * 5005 * 0.25 / iterations  # Delta lambda per check, per iteration
    checks, per_interval = int(window / 0.25), iterations // 4
    pull = lr / (1 - momentum) * sum(k * per_check * per_interval for k in range(checks))
    assert 0.2 < pull < 0.25  # about a fifth of every layer's scales (0.05..1) lie below it
    rep = train(**synthetic(method="nr", epochs=epochs, seed=seed, momentum=momentum), module=spread_cnn,
                save=False)["rejuvenation"]
    assert rep["count"] == 1 and rep["rejuvenations"][0]["epoch"] <= window
    assert rep["rejuvenations"][0]["trigger"] in ("threshold", "deadline")


def conv_linear_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize("count", ["paper", "real"])
def test_nr_cr_at_equal_paper_cost_holds_more_real_weights_and_count_real_holds_them_equal(count):
    """NR-CR keeps its zero cross blocks in dense tensors: at the paper's equal cost its tensors hold more weights
    than the baseline; ``nr.count=real`` solves for the weights the tensors hold. Both against the weights counted
    off the modules by hand."""
    seen = {}

    class Keep(NeuralRejuvenation):
        name = "nr"

        def on_fit_start(self, trainer):
            seen["before"] = conv_linear_weights(self._model(trainer))
            super().on_fit_start(trainer)

        def on_fit_end(self, trainer):
            super().on_fit_end(trainer)
            seen["after"] = conv_linear_weights(self._model(trainer))

    rep = train(**synthetic(method="test_nr_kill+nr", epochs=1,
                            method_options={"nr": {**NR_FAST, "scheme": "cr", "count": count}}), methods=[Kill, Keep],
                save=False)
    rep = rep["rejuvenation"]
    final, original = rep["counts"]["final"], rep["counts"]["original"]
    assert original["weights"] == seen["before"] == original["paper_params"] and final["weights"] == seen["after"]
    if count == "paper":
        assert abs(final["paper_params"] / seen["before"] - 1) <= 0.01 and final["weights"] > 1.2 * seen["before"]
    else:
        assert abs(final["weights"] / seen["before"] - 1) <= 0.01 and final["paper_params"] < final["weights"]


@pytest.mark.parametrize("deadline", ["rebuild", "stop"])
def test_a_window_that_ends_above_t_r_rebuilds_what_is_dead_or_stops(deadline, monkeypatch):
    """T_r = 0.05 is never reached; channels die at the last step of epoch 0; the window (half of 2 epochs) ends
    at the check after it. ``rebuild``: a rejuvenation there; ``stop``: none, and the rate restarts there."""
    monkeypatch.setattr(Kill, "at", ((0, 7),))
    LR.seen = []
    res = train(**synthetic(method="test_nr_kill+nr+test_nr_lr", epochs=2, method_options={"nr": {
        **NR_FAST, "threshold": 0.05, "hold": 0.5, "deadline": deadline}}), methods=[Kill, LR],
        save=False)["rejuvenation"]
    if deadline == "rebuild":
        (rec,) = res["rejuvenations"]
        assert (rec["epoch"], rec["trigger"]) == (1.0, "deadline") and rec["utilization_before"] >= 0.05
        assert sum(rec["widths_after"].values()) > sum(rec["live_before"].values())
    else:
        assert res["count"] == 0 and "closed at epoch 1.00" in res["notes"][0]
    for epoch, step, rate in LR.seen:  # held until the window closed at epoch 1, then the cosine over epoch 2
        t = epoch + step / 8
        assert rate == pytest.approx(0.05 * (1.0 if t < 1 else 0.5 * (1 + math.cos(math.pi * (t - 1)))))


def test_after_a_rebuild_lambda_grows_again_from_zero_in_a_new_window(monkeypatch):
    """Several rejuvenations: lambda returns to 0 at the rebuild and the adaptive rule raises it again, on a window
    of ``hold`` of the epochs that remain (here 1 of the 2 left after the rebuild at epoch 1), with that window's
    stretch; at its end the run rebuilds again (or would stop)."""
    monkeypatch.setattr(Kill, "at", ((0, 7),))
    opts = {"every": 0.25, "threshold": 0.05, "hold": 0.5, "ramp": "window", "ramp_epochs": 4.0,
            "rejuvenations": 2, "lam_step": 1e-3}
    rep = train(**synthetic(method="test_nr_kill+nr", epochs=3, nr=opts), methods=[Kill], save=False)["rejuvenation"]
    first = rep["rejuvenations"][0]
    assert (first["epoch"], first["trigger"]) == (1.5, "deadline")  # the first window: half of 3 epochs
    after = [h for h in rep["utilization"] if h["epoch"] > 1.5]
    assert after[0]["lambda_epoch"] == 0.0
    step = 1e-3 * (4.0 / 0.75) * 0.25  # the second window: half of the 1.5 epochs left, stretched to 4
    assert after[1]["lambda_epoch"] == pytest.approx(step) and after[2]["lambda_epoch"] == pytest.approx(2 * step)
    assert rep["count"] == 1 or rep["rejuvenations"][1]["epoch"] <= 2.25


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
    # a check every step, a fixed lambda pulling every scale by 0.1 a step: channels die within the first epoch
    out = run_cli(tmp_path, "method=nr", "nr.every=0.04", "nr.sparsity=fixed", "nr.lam_unit=iteration", "nr.lam=0.1",
                  "nr.threshold=0.999", "nr.hold=1", "data=digits", "model=cnn", "model.width=0.25", "epochs=1",
                  "threads=1", "progress=none", "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)["rejuvenation"]
    rec = rep["rejuvenations"][0]
    assert {"epoch", "utilization_before", "cost_before", "cost_after", "target", "widths_before",
            "widths_after"} <= set(rec)
    assert (tmp_path / json.loads(out.stdout)["run_dir"] / "rejuvenation-widths.png").is_file()


@pytest.mark.parametrize("bad, says", [(["nr.target=1.5"], "nr.target"), (["nr.scheme=xx"], "nr.scheme"),
                                       (["nr.target=0"], "nr.target"),
                                       (["nr.mode=ip"], "nr.mode=ip keeps every layer's width"),
                                       (["nr.mode=ip", "nr.scheme=nr", "nr.target=0.5"], "allowed with nr.mode=ip"),
                                       (["nr.count=real", "nr.resource=flops", "nr.scheme=ca"], "nr.count=real"),
                                       (["nr.lam_unit=week"], "nr.lam_unit"),
                                       (["model=wrn-16-4"], "layer 'layer1.0.conv2' (Conv2d) is not followed by a "
                                                            "batch norm")])
def test_cli_refuses_bad_input_in_one_line_with_exit_2(bad, says, capsys, tmp_path):
    from resprout.cli import main

    rc = main(["train", "method=nr", "data=digits", "model=cnn", "epochs=1", "progress=none", *bad])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and err.strip().count("\n") == 0, err
    assert not list((tmp_path / "runs").glob("*/checkpoint.pt"))  # refused before training: nothing written
