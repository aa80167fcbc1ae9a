"""Filter Grafting: entropy, adaptive alpha, scions (the noise scaled to the layer), the layer mix and the ring
against hand formulas; BN re-estimation against batch statistics by hand and the momentum reset against a hand SGD
loop; and whole runs (identical peers after a simultaneous K=2 graft, staggered ring, ensemble, resume across a
graft, the official per-peer learning rates, the state right after a graft under each bn/momentum option)."""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch
from torch import nn

from resprout.engine.checkpoint import load_file
from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.grafting import (
    Grafting, adaptive_alpha, alpha_bounds, bin_counts, graft_ring, grafts_at, internal_scion, layer_entropy,
    layer_groups, lr_factors, mix_states, noise_scion, noise_sigma, reestimate_bn, reset_momentum)
from resprout.run import resume, train
from tests.conftest import synthetic
from tests.faults import crash_once_at


def official_entropy(x: torch.Tensor, n: int = 10) -> float:
    """The official loop, written out: bins [lo + i*s, lo + (i+1)*s), p = count / numel, natural log."""
    x = x.reshape(-1)
    lo, hi = x.min(), x.max()
    if hi == lo:
        return 0.0
    s = (hi - lo) / n
    h = 0.0
    for i in range(n):
        p = float(((x >= lo + i * s) & (x < lo + (i + 1) * s)).sum()) / x.numel()
        if p > 0:
            h -= p * math.log(p)
    return h


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.shortcut = nn.Conv2d(1, 4, 1, bias=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc((self.bn(self.conv(x)) + self.shortcut(x)[:, :, 1:-1, 1:-1]).mean((2, 3)))


# -- criteria and alpha --------------------------------------------------------------------------------------------------
def test_entropy_matches_the_official_loop_and_its_edge_case():
    assert layer_entropy(torch.arange(10.0)) == pytest.approx(-9 * 0.1 * math.log(0.1))  # the max is in no bin
    assert layer_entropy(torch.arange(10.0), edge="inclusive") == pytest.approx(math.log(10))
    assert layer_entropy(torch.full((5, 5), 0.3)) == 0.0
    g = torch.Generator().manual_seed(0)
    for shape in [(16, 8, 3, 3), (64, 32, 3, 3), (10, 64)]:
        w = torch.randn(shape, generator=g) * 0.1
        assert layer_entropy(w) == pytest.approx(official_entropy(w), abs=1e-12)
        lo, step = w.min(), (w.max() - w.min()) / 10
        loop = torch.stack([((w >= lo + i * step) & (w < lo + (i + 1) * step)).sum() for i in range(10)])
        assert torch.equal(bin_counts(w)[0], loop)  # the max is in no bin unless rounding puts lo+10s above it
        assert int(bin_counts(w, edge="inclusive")[0].sum()) == w.numel()


def test_layer_entropy_does_not_change_when_the_layer_is_scaled():
    w = torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(1))
    h = layer_entropy(w)
    for s in (2.0, 0.5, 8.0):  # exact in floating point: the same bins exactly
        assert layer_entropy(s * w) == h
    # an inexact scale may move a value lying on an edge (the max, officially excluded) by one bin: one value's
    # share of the entropy, -p log p with p = 1/4608, is 1.8e-3
    assert layer_entropy(3.0 * w) == pytest.approx(h, abs=2e-3)


def test_alpha_is_half_at_equal_information_and_stays_inside_its_bounds():
    lo, hi = alpha_bounds(0.4)
    assert (lo, hi) == pytest.approx((0.3, 0.7))
    for h in (0.0, 1.3, 2.2):
        assert adaptive_alpha(h, h) == 0.5 and adaptive_alpha(h, h, round_to=None) == 0.5
    for dh in (-1e9, -0.05, -1e-3, 1e-3, 0.05, 1e9):
        exact = adaptive_alpha(dh, 0.0, round_to=None)
        assert lo < exact < hi
        assert exact == pytest.approx(0.5 + 0.4 / math.pi * math.atan(500 * dh))
        assert lo <= adaptive_alpha(dh, 0.0) <= hi
        assert (exact > 0.5) == (dh > 0)
    assert adaptive_alpha(0.001, 0.0) == 0.56 and adaptive_alpha(0.005, 0.0) == 0.65  # the notes' values
    # the printed Eq. 7 (no 1/pi) would leave (0, 1):
    assert 0.4 * math.atan(500 * 10) + 0.5 > 1


def test_official_learning_rate_factors():
    assert lr_factors(2) == pytest.approx([0.5, 1.0])
    assert lr_factors(4) == pytest.approx([0.1464466, 0.5, 0.8535534, 1.0])


# -- scions -------------------------------------------------------------------------------------------------------------
def test_internal_scion_adds_the_ith_largest_filter_to_the_ith_smallest_invalid_one():
    w = torch.stack([torch.full((2, 3, 3), v) for v in (0.001, 1.0, 0.002, 3.0, 2.0, 0.0)])  # l1: 18 * value
    out, n = internal_scion(w, threshold=0.1)
    assert n == 3  # filters 5 (0), 0 (0.001) and 2 (0.002) are invalid: at most half of 6
    expect = w.clone()
    expect[5] += w[3]
    expect[0] += w[4]
    expect[2] += w[1]
    assert torch.equal(out, expect)
    assert internal_scion(w, threshold=0.0)[1] == 0


def test_noise_scion_touches_only_the_invalid_filters():
    w = torch.stack([torch.full((2, 3, 3), v) for v in (0.001, 1.0, 0.0)])
    out, n = noise_scion(w, 0.1, sigma=0.5, generator=torch.Generator().manual_seed(3))
    noise = torch.randn((2, 2, 3, 3), generator=torch.Generator().manual_seed(3))
    assert n == 2 and torch.equal(out[1], w[1])
    assert torch.allclose(out[[0, 2]], w[[0, 2]] + 0.5 * noise)


def test_noise_sigma_is_scaled_to_the_layers_weight_std():
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.08
    w[3] = 0.0  # an invalid filter
    hand_std = statistics.stdev(w.flatten().tolist())  # sample std of every weight of the layer
    assert noise_sigma(0.975, 4, w, "layer") == pytest.approx(0.975 ** 4 * hand_std, rel=1e-9)
    assert noise_sigma(0.975, 4, w, "absolute") == 0.975 ** 4 == noise_sigma(0.975, 4)  # the paper's sigma_0 = 1
    out, n = noise_scion(w, 0.1, noise_sigma(0.975, 4, w, "layer"), torch.Generator().manual_seed(5))
    draw = torch.randn((1, 8, 3, 3), generator=torch.Generator().manual_seed(5))
    assert n == 1 and torch.allclose(out[3], 0.975 ** 4 * hand_std * draw[0], atol=1e-7)
    assert 0.5 < float(out[3].std()) / hand_std < 1.5  # the grafted filter has the layer's scale, not 12 times it
    with pytest.raises(ValueError):
        noise_sigma(0.975, 1, w, "relative")


# -- after the graft: BN statistics, momentum ---------------------------------------------------------------------------
def test_bn_reestimation_is_the_average_of_the_batch_statistics_by_hand():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    net[1].running_mean.fill_(5.0)  # stale statistics (a linear mix, say)
    batches = [torch.randn(4, 1, 6, 6) for _ in range(3)]
    state = torch.get_rng_state()
    net.eval()
    assert reestimate_bn(net, batches)
    assert not net.training and torch.equal(torch.get_rng_state(), state)
    for bn_index, upto in ((1, 1), (4, 4)):  # the BN's input: the network up to it, in training mode, by hand
        means, variances = [], []
        for x in batches:
            h = x
            for i in range(upto):
                layer = net[i]
                if isinstance(layer, nn.BatchNorm2d):  # normalized by its own batch statistics
                    h = (h - h.mean((0, 2, 3), keepdim=True)) / (h.var((0, 2, 3), unbiased=False, keepdim=True)
                                                                  + layer.eps).sqrt() * layer.weight[:, None, None] \
                        + layer.bias[:, None, None]
                else:
                    h = layer(h)
            flat = h.detach().transpose(0, 1).reshape(h.shape[1], -1)
            means.append([statistics.fmean(c) for c in flat.tolist()])
            variances.append([statistics.variance(c) for c in flat.tolist()])  # unbiased, as BN stores it
        bn = net[bn_index]
        hand_mean = [statistics.fmean(c) for c in zip(*means)]
        hand_var = [statistics.fmean(c) for c in zip(*variances)]
        assert bn.running_mean.tolist() == pytest.approx(hand_mean, abs=1e-5)
        assert bn.running_var.tolist() == pytest.approx(hand_var, rel=1e-4, abs=1e-6)
        assert int(bn.num_batches_tracked) == 3
    assert not reestimate_bn(nn.Linear(2, 2), batches)  # nothing to re-estimate


def hand_sgd(w: torch.Tensor, grads: list[torch.Tensor], lr: float, mu: float, wd: float,
             reset_at: int, rows=None) -> torch.Tensor:
    """SGD with momentum and weight decay written out; the velocity (of ``rows``, or all) is zeroed before step
    ``reset_at``."""
    w, buf = w.clone(), None
    for i, g in enumerate(grads):
        if i == reset_at:
            if rows is None:
                buf = torch.zeros_like(buf)
            else:
                buf = buf.clone()
                buf[rows] = 0.0
        d = g + wd * w
        buf = d.clone() if buf is None else mu * buf + d
        w = w - lr * buf
    return w


@pytest.mark.parametrize("rows", [None, [1]])
def test_momentum_reset_zeroes_the_velocity_as_a_hand_sgd_loop_does(rows):
    torch.manual_seed(0)
    net = nn.Linear(3, 4, bias=False)
    start = net.weight.detach().clone()
    grads = [torch.randn(4, 3) for _ in range(5)]
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for i, g in enumerate(grads):
        if i == 3:
            reset_momentum(opt, net, None if rows is None else {"weight": torch.tensor(rows)})
        net.weight.grad = g.clone()
        opt.step()
    assert torch.allclose(net.weight.detach(), hand_sgd(start, grads, 0.1, 0.9, 1e-2, 3, rows), atol=1e-6)
    # without dampening, zeroing the buffer is dropping it: a fresh velocity starts from the gradient either way
    if rows is None:
        a, b = nn.Linear(3, 4, bias=False), nn.Linear(3, 4, bias=False)
        b.load_state_dict(a.state_dict())
        oa, ob = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (a, b))
        for i, g in enumerate(grads):
            if i == 3:
                reset_momentum(oa, a)
                ob.state.clear()
            a.weight.grad, b.weight.grad = g.clone(), g.clone()
            oa.step()
            ob.step()
        assert torch.equal(a.weight, b.weight)
    reset_momentum(None, net)  # a member without an optimizer: nothing to do


# -- layer groups, mix, ring --------------------------------------------------------------------------------------------
def test_layer_groups_attach_batch_norm_to_its_conv_and_document_the_classifier_rule():
    net = Tiny()
    own = {g.weight: g.keys for g in layer_groups(net)}
    assert own["conv.weight"] == ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean",
                                  "bn.running_var", "bn.num_batches_tracked"]
    assert own["shortcut.weight"] == ["shortcut.weight"] and own["fc.weight"] == ["fc.weight", "fc.bias"]
    official = {g.weight: g.keys for g in layer_groups(net, "official")}
    assert list(official) == ["conv.weight"]  # shortcut and classifier take the conv's alpha
    assert official["conv.weight"][-3:] == ["shortcut.weight", "fc.weight", "fc.bias"]


def test_mix_of_two_tiny_networks_against_the_hand_formula():
    torch.manual_seed(0)
    a, b = Tiny(), Tiny()
    for net, mean in ((a, 0.2), (b, -0.4)):  # BN statistics that differ
        net.bn.running_mean.fill_(mean)
        net.bn.num_batches_tracked.fill_(7 if mean > 0 else 3)
    sa, sb = copy.deepcopy(a.state_dict()), copy.deepcopy(b.state_dict())
    groups = layer_groups(a)
    new, alphas = graft_ring([sa, sb], groups)
    for k, (own, other) in enumerate(((sa, sb), (sb, sa))):
        for g, alpha in zip(groups, alphas[k]):
            hand = round(0.5 + 0.4 / math.pi * math.atan(500 * (official_entropy(own[g.weight])
                                                                 - official_entropy(other[g.weight]))), 2)
            assert alpha == hand
            for key in g.keys:
                if key.endswith("num_batches_tracked"):
                    assert torch.equal(new[k][key], own[key])  # counters are not blended
                else:
                    assert torch.allclose(new[k][key], hand * own[key] + (1 - hand) * other[key], atol=1e-7,
                                          rtol=1e-6)
    # K = 2, simultaneous: both networks hold the same weights right after the graft
    for key in sa:
        if not key.endswith("num_batches_tracked"):
            assert torch.allclose(new[0][key], new[1][key], atol=1e-7), key


def test_ring_order_each_network_takes_from_the_pre_graft_predecessor():
    net = Tiny()
    groups = layer_groups(net)
    states = [{k: torch.full_like(v, float(i + 1)) if v.is_floating_point() else v for k, v in net.state_dict().items()}
              for i in range(3)]  # constant layers: entropy 0, alpha 0.5
    new, alphas = graft_ring(states, groups)
    assert all(a == [0.5] * len(groups) for a in alphas)
    # 1 <- 3, 2 <- 1, 3 <- 2, all from pre-graft weights (a sequential ring would give 2 <- 2)
    assert [float(s["conv.weight"].flatten()[0]) for s in new] == [2.0, 1.5, 2.5]
    new, alphas = graft_ring(states[:2], groups, n=0, ring="staggered")
    assert alphas[0] == [] and new[0] is states[0] and float(new[1]["fc.bias"][0]) == 1.5
    assert [grafts_at(k, n, "staggered") for n in range(2) for k in (1, 2)] == [False, True, True, False]


def test_mix_states_keeps_integer_entries():
    groups = layer_groups(Tiny())
    s = Tiny().state_dict()
    out = mix_states(s, s, groups, [0.3] * len(groups))
    assert out["bn.num_batches_tracked"].dtype == torch.long and set(out) == set(s)


# -- runs ---------------------------------------------------------------------------------------------------------------
def keys(**kw):
    return synthetic(**{"method": "graft", "epochs": 2, "seed": 3, **kw})


def test_simultaneous_k2_graft_leaves_identical_peers_and_staggered_does_not():
    res = train(**keys(**{"method_options": {"graft": {"timing": "before_eval"}}}), out="sim")
    ck = load_file("sim/checkpoint.pt")["members"]
    a, b = ck["peer_1"]["model"], ck["peer_2"]["model"]
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert res["final"]["peer_1"]["top1"] == res["final"]["peer_2"]["top1"]
    assert {"peer_1", "peer_2", "ensemble"} <= set(res["final"])
    g = res["grafting"]
    assert g["grafts"] == 2 and g["by_peer"]["peer_1"]["grafts"] == 2
    assert all(0.3 <= x <= 0.7 for x in g["by_peer"]["peer_1"]["last_alphas"])

    st = train(**keys(**{"method_options": {"graft": {"timing": "before_eval", "ring": "staggered"}}}), out="stag")
    ck = load_file("stag/checkpoint.pt")["members"]
    assert not torch.allclose(ck["peer_1"]["model"]["conv1.weight"], ck["peer_2"]["model"]["conv1.weight"])
    assert st["grafting"]["by_peer"]["peer_1"]["grafts"] == 1 and st["grafting"]["by_peer"]["peer_2"]["grafts"] == 1


def test_peers_differ_in_initial_weights_and_data_order_and_the_ensemble_is_the_mean_probability(monkeypatch):
    seen = {}

    def spy(self, trainer):
        if trainer.epoch == 0 and not seen:
            for n in ("peer_1", "peer_2"):
                seen[n] = {k: v.clone() for k, v in trainer.members[n].model.state_dict().items()}
            seen["batches"] = [trainer.inputs_of("peer_1").clone(), trainer.inputs_of("peer_2").clone()]
    monkeypatch.setattr(Grafting, "on_batch_start", spy, raising=False)
    res = train(**keys(epochs=1), save=False)
    assert not torch.equal(seen["peer_1"]["conv1.weight"], seen["peer_2"]["conv1.weight"])
    assert not torch.equal(*seen["batches"])
    # peer 1 starts from the run's own initial weights: those of a baseline run with the same seed
    base = {}
    monkeypatch.setattr(Grafting, "on_batch_start", lambda self, t: None, raising=False)
    from resprout.methods.classification import CrossEntropy
    monkeypatch.setattr(CrossEntropy, "on_batch_start", lambda self, t: base.setdefault(
        "w", t.members["model"].model.conv1.weight.detach().clone()), raising=False)
    train(**synthetic(method="ce", epochs=1, seed=3), save=False)
    assert torch.equal(base["w"], seen["peer_1"]["conv1.weight"])
    assert 0 <= res["final"]["ensemble"]["top1"] <= 1


@pytest.mark.parametrize("after", [{}, {"bn": "reestimate", "momentum": "reset", "bn_batches": 3}])
def test_resume_across_a_graft_is_bit_identical(monkeypatch, after):
    keys_ = keys(epochs=3, momentum=0.9, method_options={"graft": after})
    whole = train(**keys_, out="whole")
    crash_once_at(monkeypatch, Grafting, 1, 3)  # after the graft at epoch 2's start
    with pytest.raises(RuntimeError, match="simulated"):
        train(**keys_, out="crashed")
    monkeypatch.delattr(Grafting, "on_batch_start")
    again = resume("crashed", progress="none")
    a, b = load_file("whole/checkpoint.pt"), load_file("crashed/checkpoint.pt")
    for m in ("peer_1", "peer_2"):
        for k, v in a["members"][m]["model"].items():
            assert torch.equal(v, b["members"][m]["model"][k]), f"{m}.{k}"
    assert again["final"] == whole["final"]


def test_noise_and_internal_scions_run_with_one_network_and_external_refuses_it():
    res = train(**keys(epochs=1, **{"method_options": {"graft": {"scion": "internal", "peers": 1,
                                                                 "threshold": 1e9, "timing": "before_eval"}}}),
                save=False)
    assert set(res["final"]) == {"peer_1"} and res["grafting"]["by_peer"]["peer_1"]["filters"] > 0
    with pytest.raises(ConfigError, match="graft.peers must be at least 2") as e:
        train(**keys(**{"method_options": {"graft": {"peers": 1}}}), save=False)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_cli_refuses_a_bad_option_with_one_line(tmp_path):
    import subprocess

    from tests.conftest import PYTHON, cli_env

    proc = subprocess.run([PYTHON, "-m", "resprout", "train", "method=graft", "graft.peers=1", "data=synthetic",
                           "data.n_train=64", "data.n_test=16", "data.image_size=8", "epochs=1", "--out", str(tmp_path / "x")], env=cli_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x").exists()


def test_the_ensemble_is_the_mean_probability_of_the_peers():
    import torch.nn.functional as F

    from resprout.run import open_run

    res = train(**keys(epochs=1, **{"method_options": {"graft": {"scion": "none", "peers": 3}}}), out="ens")
    assert res["grafting"]["grafts"] == 0
    tr = open_run("ens", device="cpu")
    probs, labels = 0, []
    for name in ("peer_1", "peer_2", "peer_3"):
        m = tr.members[name].model.eval()
        with torch.no_grad():
            out = [(F.softmax(m(x), 1), y) for x, y in tr.eval_loaders["test"]]
        probs = probs + torch.cat([p for p, _ in out]) / 3
        labels = torch.cat([y for _, y in out])
    assert res["final"]["ensemble"]["top1"] == pytest.approx(float((probs.argmax(1) == labels).float().mean()))


def test_grafting_plus_trains_every_peer_on_ce_and_kd_against_the_teacher(tmp_path):
    from tests.test_trainer import metric_rows

    train(**synthetic(method="ce", epochs=1, seed=9, width=1.0), out=tmp_path / "teacher")
    res = train(**keys(epochs=1, method="graft+kd", teacher=[str(tmp_path / "teacher")],
                       **{"method_options": {"kd": {"temperature": 2.0, "weight": 1.0, "ce_weight": 1.0}}}),
                out=tmp_path / "gplus")
    terms = {(r[0], r[4]) for r in metric_rows(tmp_path / "gplus") if r[3] == "train"}
    for peer in ("peer_1", "peer_2"):
        assert {(peer, "loss_ce"), (peer, "loss_kd")} <= terms
    assert "teacher" not in res["final"] and res["grafting"]["grafts"] == 0  # 1 epoch: after_eval never grafts


# -- right after a graft: learning rates, BN statistics, momentum ---------------------------------------------------------
class GraftProbe(Method):
    """Listed before graft: the peers at the start of epoch 2 before the graft (graft's own epoch start runs after
    this one's) and at its first batch, right after it (before any step), with the batches bn=reestimate uses."""

    name = "test_graft_probe"
    log: dict = {}

    @staticmethod
    def snapshot(trainer) -> dict:
        out = {}
        for name in ("peer_1", "peer_2"):
            if name not in trainer.members:
                continue
            m = trainer.members[name]
            params = dict(m.model.named_parameters())
            out[name] = {"model": copy.deepcopy(m.model), "lr": m.optimizer.param_groups[0]["initial_lr"],
                         "momentum": {n: m.optimizer.state[p]["momentum_buffer"].clone()
                                      for n, p in params.items() if p in m.optimizer.state}}
        return out

    def on_epoch_start(self, trainer):
        if trainer.epoch == 1:
            GraftProbe.log = {"before": self.snapshot(trainer)}

    def on_batch_start(self, trainer):
        if (trainer.epoch, trainer.step) == (1, 0):
            GraftProbe.log["after"] = self.snapshot(trainer)
            batches = {}
            for name in GraftProbe.log["after"]:
                seed = trainer.members[name].data_seed
                loader = trainer.train_loader if seed is None else trainer.train_loader.stream(seed)
                batches[name] = [loader.batch(0, 1, s)[0] for s in range(loader.steps(0, 1))]
                assert torch.equal(batches[name][0], trainer.inputs_of(name))  # the peer's own data order
            GraftProbe.log["batches"] = batches



def hand_bn_statistics(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, tuple[list, list]]:
    """Every BN's input on each batch (hooks, training mode), and the average of its per-batch mean and unbiased
    variance per channel."""
    model = copy.deepcopy(model).train()
    seen: dict[str, list] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: seen.setdefault(n, []).append(inp[0].detach()))
             for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    out = {}
    for n, inputs in seen.items():
        flat = [i.transpose(0, 1).reshape(i.shape[1], -1).double() for i in inputs]
        means = torch.stack([f.mean(1) for f in flat]).mean(0)
        variances = torch.stack([f.var(1, unbiased=True) for f in flat]).mean(0)
        out[n] = (means, variances)
    return out


def probe_run(**graft):
    keys = synthetic(**{"method": "test_graft_probe+graft", "epochs": 2, "seed": 3, "momentum": 0.9,
                        "method_options": {"graft": graft}})
    train(**keys, save=False, methods=[GraftProbe])
    return GraftProbe.log


def test_default_learning_rates_are_the_official_cosine_factors_and_official_bn_and_momentum_are_kept():
    log = probe_run()  # defaults: lr_factors=cosine, bn=mix, momentum=keep
    before, after = log["before"], log["after"]
    assert [after[p]["lr"] for p in ("peer_1", "peer_2")] == pytest.approx([0.05 * 0.5, 0.05 * 1.0])
    for p in ("peer_1", "peer_2"):
        assert after[p]["momentum"] and all(torch.equal(after[p]["momentum"][n], before[p]["momentum"][n])
                                            for n in before[p]["momentum"])
    # the BN statistics are the linear mix of the two peers' (alpha of the BN's conv)
    groups = layer_groups(before["peer_1"]["model"])
    new, _ = graft_ring([before[p]["model"].state_dict() for p in ("peer_1", "peer_2")], groups)
    for k, p in enumerate(("peer_1", "peer_2")):
        assert torch.allclose(after[p]["model"].state_dict()["bn1.running_var"], new[k]["bn1.running_var"])
    same = probe_run(lr_factors="same")["after"]
    assert same["peer_1"]["lr"] == same["peer_2"]["lr"] == 0.05


def test_bn_reestimate_and_momentum_reset_right_after_a_graft():
    log = probe_run(bn="reestimate", momentum="reset", bn_batches=5)
    after = log["after"]
    for p in ("peer_1", "peer_2"):
        assert after[p]["momentum"] and all(float(b.abs().max()) == 0 for b in after[p]["momentum"].values())
        hand = hand_bn_statistics(after[p]["model"], log["batches"][p][:5])
        bns = dict(after[p]["model"].named_modules())
        assert hand
        for n, (mean, var) in hand.items():
            assert torch.allclose(bns[n].running_mean.double(), mean, atol=1e-5), (p, n)
            assert torch.allclose(bns[n].running_var.double(), var, rtol=1e-4, atol=1e-6), (p, n)
    # noise scions: only the grafted filters' velocity is reset (every conv filter is invalid below 1e9)
    log = probe_run(scion="noise", peers=1, threshold=1e9, momentum="reset")
    before, after = log["before"]["peer_1"]["momentum"], log["after"]["peer_1"]["momentum"]
    for n, buf in after.items():
        if n.startswith("conv") and n.endswith("weight"):
            assert float(buf.abs().max()) == 0, n
        else:
            assert torch.equal(buf, before[n]), n


def test_momentum_reset_refuses_adam_in_one_line(tmp_path):
    keys = synthetic(**{"method": "graft", "epochs": 1, "member_options": {"peer_2": {"optimizer": "adam"}},
                        "method_options": {"graft": {"momentum": "reset"}}})
    with pytest.raises(ConfigError, match="graft.momentum=reset zeroes SGD momentum") as e:
        train(**keys, out=tmp_path / "run")
    assert "\n" not in str(e.value) and not (tmp_path / "run" / "checkpoint.pt").exists()
