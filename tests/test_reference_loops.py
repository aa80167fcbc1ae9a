"""Reference loops that share nothing with the trainer's optimizer code: torch's SGD built by hand and the cosine
rate by its formula (tests/reference.py), never ``build_optimizer``, ``set_lr`` or ``Schedule.factor``.

One per method family at least; the others live beside their family's tests:

* task losses (CE): tests/test_engine.py::test_the_default_step_is_unchanged_when_no_method_declares_steps
* distillation (KD, FitNet, AT): tests/test_distill_family.py::hand_loop and the tests that call it
* Born-Again networks: tests/test_born_again.py::test_two_generations_equal_a_hand_loop
* Knowledge Evolution, Filter Grafting, Network Slimming and DSD: here.

Each method's own step is written out too (the reset hypothesis zeroed, the layer mix with Eq. 7's alpha, the L1
subgradient on BN scales, the magnitude masks); only data structures pinned by their own tests are taken from the
run (KE's masks, which batches a peer sees).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resprout.config import make_config
from resprout.engine.method import Method
from resprout.run import create_trainer
from tests import reference as by_hand
from tests.conftest import synthetic
from tests.test_grafting import official_entropy


def trainer_for(methods: list | None = None, **keys):
    return create_trainer(make_config(**synthetic(**keys)), run_dir=None, run_id=None, store_path=None,
                          methods=methods or [])


def assert_equal_weights(got: nn.Module, expected: nn.Module, atol: float = 0.0) -> None:
    a, b = got.state_dict(), expected.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        if atol:
            assert torch.allclose(a[k].double(), b[k].double(), atol=atol, rtol=0), k
        else:
            assert torch.equal(a[k], b[k]), k


def ce_epoch(model, opt, loader, g, e, epochs, lr=by_hand.LR, after_backward=None, after_step=None) -> None:
    """One epoch of CE: zero the gradients, backward, (``after_backward``), the cosine rate, step, (``after_step``)."""
    steps = loader.steps(g, e)
    model.train()
    for s in range(steps):
        x, y = loader.batch(g, e, s)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward:
            after_backward()
        by_hand.step(opt, lr * by_hand.cosine(e + s / steps, epochs))
        if after_step:
            after_step()


class Snapshot(Method):
    """Listed before the method under test: the member's state at every epoch's end, before that method acts."""

    name = "test_snapshot"
    states: dict = {}

    def on_fit_start(self, trainer):
        Snapshot.states = {}

    def on_epoch_end(self, trainer):
        Snapshot.states[(trainer.generation, trainer.epoch)] = {
            k: v.detach().clone() for k, v in trainer.members["model"].model.state_dict().items()}


# -- Knowledge Evolution -----------------------------------------------------------------------------------------------
def test_knowledge_evolution_equals_a_hand_loop_over_two_generations():
    """Taha et al. Algorithm 1 with the reset hypothesis re-initialized to zeros: generation 1 is plain CE;
    generation 2 keeps the fit hypothesis, zeroes the reset one, and trains with a fresh optimizer and the
    schedule from its start."""
    trainer = trainer_for(method="ke", generations=2, epochs=2, method_options={"ke": {"reinit": "zeros"}})
    model = copy.deepcopy(trainer.members["model"].model)
    trainer.fit()
    masks = next(m for m in trainer.methods if m.name == "ke").masks  # True: the fit hypothesis
    assert masks and all(not m.all() and m.any() for m in masks.values())

    loader = trainer.train_loader
    for g in range(2):
        if g == 1:
            with torch.no_grad():
                params = dict(model.named_parameters())
                for name, keep in masks.items():
                    params[name][~keep] = 0.0
        opt = by_hand.sgd(model)  # every generation starts a new optimizer (no momentum carried over)
        for e in range(2):
            ce_epoch(model, opt, loader, g, e, 2)
    assert_equal_weights(trainer.members["model"].model, model)


# -- Filter Grafting ---------------------------------------------------------------------------------------------------
def cnn_layer_groups(state: dict) -> list[tuple[str, list[str]]]:
    """The CNN's layers and what each one's alpha mixes: a conv with its batch norm, the classifier with its bias."""
    groups = [(f"conv{i}.weight", [k for k in state if k.startswith((f"conv{i}.", f"bn{i}."))]) for i in (1, 2, 3)]
    return groups + [("fc.weight", ["fc.weight", "fc.bias"])]


def hand_graft(own: dict, other: dict) -> dict:
    """Eq. 2 with Eq. 7's alpha (A = 0.4, c = 500, rounded to 0.01) from the layers' entropies (Eq. 6, 10 bins);
    integer entries (BN's batch counter) stay the network's own."""
    out = {}
    for weight, keys in cnn_layer_groups(own):
        alpha = round(0.5 + 0.4 / math.pi * math.atan(500 * (official_entropy(own[weight])
                                                               - official_entropy(other[weight]))), 2)
        for k in keys:
            out[k] = alpha * own[k] + (1 - alpha) * other[k] if own[k].is_floating_point() else own[k].clone()
    return out


def test_filter_grafting_equals_a_hand_loop_of_two_peers():
    """Cheng et al. Algorithm 1 with K = 2 (the defaults): each peer trains on its own data order at its own rate
    (the official factors (1 + cos(pi (K - k) / K)) / 2: 0.5 and 1), and at the start of epoch 2 each takes the
    other's pre-graft layers in its own proportion; the SGD velocity is kept."""
    trainer = trainer_for(method="graft", epochs=2, seed=3)
    peers = [copy.deepcopy(trainer.members[f"peer_{k}"].model) for k in (1, 2)]
    loaders = [trainer.train_loader, trainer.train_loader.stream(trainer.members["peer_2"].data_seed)]
    trainer.fit()

    rates = [by_hand.LR * (1 + math.cos(math.pi * (2 - k) / 2)) / 2 for k in (1, 2)]
    assert rates == [0.025, 0.05]
    opts = [by_hand.sgd(p) for p in peers]
    steps = loaders[0].steps(0, 0)
    for e in range(2):
        if e == 1:  # the graft, both from the pre-graft weights
            states = [copy.deepcopy(p.state_dict()) for p in peers]
            for k, p in enumerate(peers):
                p.load_state_dict(hand_graft(states[k], states[1 - k]))
        for p in peers:
            p.train()
        for s in range(steps):
            (x1, y1), (x2, y2) = (ld.batch(0, e, s) for ld in loaders)
            loss = F.cross_entropy(peers[0](x1), y1) + F.cross_entropy(peers[1](x2), y2)
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o, lr in zip(opts, rates):
                by_hand.step(o, lr * by_hand.cosine(e + s / steps, 2))
    for k, p in enumerate(peers, start=1):
        # Eq. 2 here is alpha * a + (1 - alpha) * b, in the library one fused lerp: rounding apart
        assert_equal_weights(trainer.members[f"peer_{k}"].model, p, atol=1e-5)


# -- Network Slimming --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("unit", [None, "epoch"])
def test_network_slimmings_sparsity_training_equals_a_hand_loop(unit):
    """Liu et al. Eq. 1 by its subgradient: after every backward, lambda * sign(gamma) is added to the gradient of
    every BN scale; the weights at the end of epoch 1 (before the pruning that follows it) equal the hand loop's.
    ``slimming.lam`` is applied as given at each iteration (the default unit), or, with ``slimming.lam_unit=epoch``,
    as lam / (iterations per epoch)."""
    given = 0.08 if unit == "epoch" else 0.005
    options = {"lam": given, "prune_at": 0.5, **({"lam_unit": unit} if unit else {})}
    trainer = trainer_for([Snapshot], method="test_snapshot+slimming", epochs=2,
                          method_options={"slimming": options})
    model = copy.deepcopy(trainer.members["model"].model)
    trainer.fit()
    bns = [model.bn1, model.bn2, model.bn3]
    lam = given / trainer.train_loader.steps(0, 0) if unit == "epoch" else given

    def l1_subgradient():
        with torch.no_grad():
            for bn in bns:
                bn.weight.grad += lam * torch.sign(bn.weight)

    ce_epoch(model, by_hand.sgd(model), trainer.train_loader, 0, 0, 2, after_backward=l1_subgradient)
    before_pruning, expected = Snapshot.states[(0, 0)], model.state_dict()
    assert before_pruning.keys() == expected.keys()
    for k in expected:
        assert torch.equal(before_pruning[k], expected[k]), k
    assert trainer.results["slimming"]["epoch"] == 1  # and it was pruned right after


# -- Dense-Sparse-Dense ------------------------------------------------------------------------------------------------
def test_dense_sparse_dense_equals_a_hand_loop():
    """Han et al. Algorithm 1, one epoch per phase: dense; sparse (the 30% smallest |W| of every conv and linear
    weight pruned, held at zero: weights, gradients and momentum masked); re-dense from zero at a tenth of the
    rate, the cosine schedule running on over the three epochs."""
    trainer = trainer_for(method="dsd", epochs=3)
    model = copy.deepcopy(trainer.members["model"].model)
    trainer.fit()

    opt = by_hand.sgd(model)
    loader = trainer.train_loader
    ce_epoch(model, opt, loader, 0, 0, 3)
    masks = {}
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            pruned = p.detach().abs().flatten().argsort(stable=True)[:round(0.3 * p.numel())]
            keep = torch.ones(p.numel(), dtype=torch.bool)
            keep[pruned] = False
            masks[name] = keep.view(p.shape)
    params = dict(model.named_parameters())

    def mask_weights():
        with torch.no_grad():
            for name, keep in masks.items():
                params[name][~keep] = 0.0

    def mask_gradients():
        for name, keep in masks.items():
            params[name].grad[~keep] = 0.0

    mask_weights()
    for name, keep in masks.items():
        opt.state[params[name]]["momentum_buffer"][~keep] = 0.0
    ce_epoch(model, opt, loader, 0, 1, 3, after_backward=mask_gradients, after_step=mask_weights)
    ce_epoch(model, opt, loader, 0, 2, 3, lr=by_hand.LR * 0.1)
    assert_equal_weights(trainer.members["model"].model, model)
