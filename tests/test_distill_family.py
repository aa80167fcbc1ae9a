"""KD, FitNet and attention transfer: each loss against its formula written out by hand, each method against a
hand-written training loop, the regressor's kernel solver against brute force, and the layer options' refusals."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resprout.config import make_config
from resprout.engine.optim import OPTIM_KEYS, build_optimizer, set_lr
from resprout.errors import ConfigError
from resprout.methods.distill import kd_loss, kd_loss_to, soft_targets
from resprout.methods.hints import (
    at_loss,
    attention_map,
    fitnet_lambda,
    hint_loss,
    make_regressor,
    regressor_kernel,
    relaxed_kl,
    transposed_kernel,
)
from resprout.models import build_model
from resprout.run import create_trainer
from tests import reference as by_hand
from tests.conftest import synthetic

ATOL = 1e-6  # the engine sums the same terms in the same order; only float reassociation may differ


def teacher_net(seed: int = 11, width: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", in_channels=1, num_classes=4, width=width)


def trainer_with(method: str, teachers: list[nn.Module], **keys):
    keys = {"epochs": 1, **keys}
    cfg = make_config(**synthetic(method=method, teacher=[f"module:T{i}" for i in range(len(teachers))], **keys))
    return create_trainer(cfg, run_dir=None, run_id=None, store_path=None, teachers=teachers)


def hand_loop(trainer, loss_fn, nets: dict[str, nn.Module]):
    """One epoch of SGD on ``nets`` (copies of the initial trainable networks) with ``loss_fn(nets, x, y)``: torch's
    SGD and the cosine rate written out (tests/reference.py), the settings every member of these runs has."""
    opts = {}
    for name, net in nets.items():
        opts[name] = by_hand.sgd(net)
        net.train()
    loader = trainer.train_loader
    steps = loader.steps(0, 0)
    for s in range(steps):
        x, y = loader.batch(0, 0, s)
        loss = loss_fn(nets, x, y)
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts.values():
            by_hand.step(o, by_hand.LR * by_hand.cosine(s / steps, 1))
    return nets


def assert_close(a: nn.Module, b: nn.Module, rtol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=ATOL, rtol=rtol), k


# -- pure losses -------------------------------------------------------------------------------------------------------
def test_kd_losses_equal_the_written_out_kl_times_t_squared():
    torch.manual_seed(0)
    s, t1, t2 = torch.randn(5, 7), torch.randn(5, 7), torch.randn(5, 7)
    T = 4.0
    p_s = torch.softmax(s / T, 1)
    q = torch.softmax(t1 / T, 1)
    hand = (q * (q.log() - p_s.log())).sum(1).mean() * T * T
    assert torch.allclose(kd_loss(s, t1, T), hand, atol=1e-6)
    assert torch.allclose(kd_loss_to(s, soft_targets(t1, T), T), hand, atol=1e-6)
    # several teachers: the target is the mean of their softened probabilities (not of their logits)
    mean_p = (torch.softmax(t1 / T, 1) + torch.softmax(t2 / T, 1)) / 2
    assert torch.allclose(soft_targets([t1, t2], T), mean_p)
    hand2 = (mean_p * (mean_p.log() - p_s.log())).sum(1).mean() * T * T
    assert torch.allclose(kd_loss_to(s, soft_targets([t1, t2], T), T), hand2, atol=1e-6)
    assert not torch.allclose(soft_targets([t1, t2], T), torch.softmax((t1 + t2) / 2 / T, 1))


def hand_attention(f: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis' attention map written out: the channel mean of the squares, flattened, divided by
    its L2 norm per image (the channel mean and sum differ by a factor the normalization removes)."""
    q = (f * f).mean(1).reshape(len(f), -1)
    return q / torch.sqrt((q * q).sum(1, keepdim=True))


def test_attention_and_hint_losses_equal_their_formulas():
    torch.manual_seed(0)
    fs, ft = torch.randn(3, 5, 4, 4), torch.randn(3, 9, 4, 4)
    # the default (the authors' code): the mean over batch and positions of the squared difference
    d = hand_attention(fs) - hand_attention(ft)
    assert torch.allclose(at_loss(fs, ft), (d * d).sum() / (3 * 16), atol=1e-7)
    # form=ktan: half the L2 norm of the difference per image (not squared), averaged over the batch
    hand = 0.0
    for n in range(3):
        qs = (fs[n] ** 2).sum(0).flatten()
        qt = (ft[n] ** 2).sum(0).flatten()
        hand += 0.5 * torch.sqrt(((qs / qs.norm() - qt / qt.norm()) ** 2).sum()) / 3
    assert torch.allclose(at_loss(fs, ft, form="ktan"), hand, atol=1e-6)
    with pytest.raises(ValueError, match="official, ktan"):
        at_loss(fs, ft, form="squared")
    # maps of different resolution are compared at the smaller one (the larger attention map average-pooled)
    big = torch.randn(3, 5, 8, 8)
    pooled = F.avg_pool2d((big ** 2).sum(1, keepdim=True), 2)
    assert torch.allclose(attention_map(big, size=(4, 4)), F.normalize(pooled.flatten(1), dim=1), atol=1e-6)
    r, t = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    assert torch.allclose(hint_loss(r, t), ((r - t) ** 2).sum() / r.numel())
    # FitNets' Eq. (2) soft term: KL of the tau-relaxed distributions, no tau^2
    zs, zt = torch.randn(4, 6), torch.randn(4, 6)
    q, log_p = torch.softmax(zt / 3, 1), torch.log_softmax(zs / 3, 1)
    assert torch.allclose(relaxed_kl(zs, zt, 3.0), (q * (q.log() - log_p)).sum(1).mean(), atol=1e-6)
    assert [fitnet_lambda(4.0, 1.0, x) for x in (0.0, 0.5, 1.0, 2.0)] == [4.0, 2.5, 1.0, 1.0]


def test_regressor_kernel_equals_brute_force_over_real_convolutions():
    for m_in, m_out, stride, pad in itertools.product(range(1, 8), range(1, 8), (1, 2, 3), (0, 1)):
        # every kernel for which the paper's equation holds exactly, checked on a real Conv2d
        exact = [k for k in range(1, m_in + 2 * pad + 1) if (m_in + 2 * pad - k) % stride == 0
                 and F.conv2d(torch.zeros(1, 1, m_in, 1), torch.zeros(1, 1, k, 1), stride=stride,
                              padding=(pad, 0)).shape[2] == m_out]
        if exact:
            assert exact == [regressor_kernel(m_in, m_out, stride, pad)], (m_in, m_out, stride, pad)
        else:
            with pytest.raises(ValueError):
                regressor_kernel(m_in, m_out, stride, pad)
    for m_in, m_out in itertools.product(range(1, 7), range(1, 7)):
        if m_out >= m_in:
            k = transposed_kernel(m_in, m_out)
            assert F.conv_transpose2d(torch.zeros(1, 1, m_in, 1), torch.zeros(1, 1, k, 1)).shape[2] == m_out
        else:
            with pytest.raises(ValueError):
                transposed_kernel(m_in, m_out)


def test_make_regressor_uses_a_conv_or_the_transposed_alternative():
    down = make_regressor((64, 8, 6), (16, 4, 4))
    assert isinstance(down, nn.Conv2d) and down.kernel_size == (5, 3)
    assert down(torch.zeros(2, 64, 8, 6)).shape == (2, 16, 4, 4)
    up = make_regressor((64, 2, 2), (32, 4, 4))  # the teacher map is smaller: ResNet-56 -> CNN on digits
    assert isinstance(up, nn.ConvTranspose2d) and up(torch.zeros(2, 64, 2, 2)).shape == (2, 32, 4, 4)
    with pytest.raises(ConfigError, match="grows, the other shrinks"):
        make_regressor((8, 2, 6), (8, 4, 4))


# -- the methods against hand loops ------------------------------------------------------------------------------------
def test_kd_method_equals_a_hand_loop_with_two_teachers_mean_probability():
    t1, t2 = teacher_net(11), teacher_net(12, width=0.5)
    trainer = trainer_with("kd", [t1, t2], **{"kd.temperature": 3.0, "kd.weight": 0.7})
    assert sorted(trainer.members) == ["model", "teacher_1", "teacher_2"]

    def loss(nets, x, y):
        logits = nets["model"](x)
        with torch.no_grad():
            target = (torch.softmax(t1(x) / 3, 1) + torch.softmax(t2(x) / 3, 1)) / 2
        kl = (target * (target.log() - torch.log_softmax(logits / 3, 1))).sum(1).mean() * 9
        return 0.3 * F.cross_entropy(logits, y) + 0.7 * kl

    ref = hand_loop(trainer, loss, {"model": copy.deepcopy(trainer.members["model"].model)})
    trainer.fit()
    assert_close(trainer.members["model"].model, ref["model"])
    # teachers stayed frozen, in eval mode
    for name, t in (("teacher_1", t1), ("teacher_2", t2)):
        assert not t.training and all(not p.requires_grad for p in t.parameters())


def test_kd_ce_weight_gives_grafting_plus_recipe_and_acts_on_every_task_member(monkeypatch):
    trainer = trainer_with("kd", [teacher_net()], **{"kd.temperature": 2.0, "kd.weight": 1.0, "kd.ce_weight": 1.0})
    peer = build_model("cnn", in_channels=1, num_classes=4, width=0.5)
    trainer.add_member("peer_1", peer)
    added = []
    original = trainer.add_loss
    teacher = trainer.members["teacher"].model

    def record(m, n, v):
        logits = trainer.outputs[m].detach()
        if n == "ce":  # weight 1, not 1 - kd.weight = 0
            expected = F.cross_entropy(logits, trainer.targets)
        else:  # tau^2 * KL to the teacher's tau-softened probabilities
            with torch.no_grad():
                q = torch.softmax(teacher(trainer.inputs) / 2, 1)
            expected = (q * (q.log() - torch.log_softmax(logits / 2, 1))).sum(1).mean() * 4
        added.append((m, n, torch.allclose(v.detach(), expected, atol=1e-5)))
        original(m, n, v)

    monkeypatch.setattr(trainer, "add_loss", record)
    trainer.fit()
    assert {(m, n) for m, n, _ in added} == {("model", "ce"), ("model", "kd"), ("peer_1", "ce"), ("peer_1", "kd")}
    assert all(ok for _, _, ok in added)


def test_fitnet_one_stage_equals_a_hand_loop_with_its_regressor_trained_alongside():
    t = teacher_net()
    trainer = trainer_with("fitnet", [t], **{"fitnet.weight": 2.0, "fitnet.stages": 1})
    reg0 = copy.deepcopy(trainer.members["regressor"].model)
    assert isinstance(reg0, nn.Conv2d) and reg0.in_channels == 32 and reg0.out_channels == 64  # student->teacher
    feats = {}

    def loss(nets, x, y):
        logits = nets["model"](x)
        with torch.no_grad():
            t(x)
        return F.cross_entropy(logits, y) + 2.0 * F.mse_loss(nets["regressor"](feats["s"]), feats["t"])

    student = copy.deepcopy(trainer.members["model"].model)
    student.relu3.register_forward_hook(lambda m, i, o: feats.__setitem__("s", o))
    t.relu3.register_forward_hook(lambda m, i, o: feats.__setitem__("t", o))
    ref = hand_loop(trainer, loss, {"model": student, "regressor": reg0})
    trainer.fit()
    assert_close(trainer.members["model"].model, ref["model"])
    assert_close(trainer.members["regressor"].model, ref["regressor"])


def test_fitnet_two_stages_equal_a_hand_loop_of_romero_algorithm_1():
    """The default: stage 1 trains the student up to its guided layer and the regressor on the hint alone; stage 2
    restarts the student's optimizer and trains all of it on Eq. (2) with lambda annealed from 4 to 1."""
    t = teacher_net()
    trainer = trainer_with("fitnet", [t], epochs=2)
    assert sorted(trainer.members) == ["model", "regressor", "teacher"]
    student = copy.deepcopy(trainer.members["model"].model)
    reg = copy.deepcopy(trainer.members["regressor"].model)
    trainer.fit()

    feats = {}
    student.relu3.register_forward_hook(lambda m, i, o: feats.__setitem__("s", o))
    t.relu3.register_forward_hook(lambda m, i, o: feats.__setitem__("t", o))
    spec = {k: trainer.optim_spec(trainer.members["model"])[k] for k in OPTIM_KEYS}
    opt_s, opt_r = build_optimizer(student, spec), build_optimizer(reg, spec)
    loader = trainer.train_loader
    per_epoch = loader.steps(0, 0)
    total = 2 * per_epoch
    k = round(0.25 * total)
    fc0 = student.fc.weight.detach().clone()
    student.train()
    for g in range(total):
        epoch, s = divmod(g, per_epoch)
        factor = trainer.schedule.factor(epoch + s / per_epoch, 1 / per_epoch)
        x, y = loader.batch(0, epoch, s)
        if g == k:  # stage 2: a fresh optimizer (no momentum) for the whole student
            assert torch.equal(student.fc.weight, fc0)  # stage 1 never moved the layers after the guided one
            opt_s = build_optimizer(student, spec)
        logits = student(x)
        with torch.no_grad():
            t_logits = t(x)
        if g < k:
            loss = ((reg(feats["s"]) - feats["t"]) ** 2).mean()
            opts = (opt_s, opt_r)
        else:
            lam = 4.0 + (1.0 - 4.0) * (g - k) / (total - k - 1)
            q = torch.softmax(t_logits / 3, 1)
            soft = (q * (q.log() - torch.log_softmax(logits / 3, 1))).sum(1).mean()
            loss = F.cross_entropy(logits, y) + lam * soft
            opts = (opt_s,)
        for o in (opt_s, opt_r):
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            set_lr(o, factor)
            o.step()
    assert_close(trainer.members["model"].model, student)
    assert_close(trainer.members["regressor"].model, reg)


def test_fitnet_refuses_an_empty_stage_and_a_second_task_loss():
    with pytest.raises(ConfigError, match="leaves stage 1 empty"):
        trainer_with("fitnet", [teacher_net()], **{"fitnet.hint_fraction": 0.01})
    with pytest.raises(ConfigError, match="leaves stage 2 empty"):
        trainer_with("fitnet", [teacher_net()], **{"fitnet.hint_fraction": 1.0})
    with pytest.raises(ConfigError, match="fitnet and kd both provide the task loss"):
        trainer_with("fitnet+kd", [teacher_net()])
    trainer_with("fitnet+kd", [teacher_net()], **{"fitnet.stages": 1})  # one stage: KD may supply the task loss


@pytest.mark.parametrize("form,beta", [(None, 1000.0), ("ktan", 0.05)])
def test_attention_transfer_equals_a_hand_loop_on_two_layer_pairs(form, beta):
    """The default weight and form (the authors' code), and KTAN's Table I setting; the attention maps are
    computed here, not by the library."""
    t = teacher_net()
    keys = {"at.student_layers": "relu2,relu3", "at.teacher_layers": "relu2,relu3"}
    if form:
        keys["at.form"] = form
    trainer = trainer_with("at", [t], **keys)
    feats: dict = {}
    student = copy.deepcopy(trainer.members["model"].model)
    for net, side in ((student, "s"), (t, "t")):
        for layer in ("relu2", "relu3"):
            getattr(net, layer).register_forward_hook(lambda m, i, o, k=(side, layer): feats.__setitem__(k, o))

    def loss(nets, x, y):
        logits = nets["model"](x)
        with torch.no_grad():
            t(x)
        at = 0.0
        for layer in ("relu2", "relu3"):
            d = hand_attention(feats[("s", layer)]) - hand_attention(feats[("t", layer)])
            at = at + ((d * d).mean() if form is None else 0.5 * torch.sqrt((d * d).sum(1)).mean())
        return F.cross_entropy(logits, y) + beta * at

    ref = hand_loop(trainer, loss, {"model": student})
    trainer.fit()
    # beta = 1000 magnifies float reassociation (a channel mean here, a sum there): a relative tolerance
    assert_close(trainer.members["model"].model, ref["model"], rtol=1e-5)


def test_kd_weights_that_leave_a_negative_or_no_loss_are_refused():
    with pytest.raises(ConfigError, match="negative"):
        trainer_with("kd", [teacher_net()], **{"kd.weight": 1.5})
    with pytest.raises(ConfigError, match="leave no loss"):
        trainer_with("kd", [teacher_net()], **{"kd.weight": 0.0, "kd.ce_weight": 0.0})


def test_layer_options_are_validated_at_the_start():
    with pytest.raises(ConfigError, match="no module 'relu9'"):
        trainer_with("fitnet", [teacher_net()], **{"fitnet.student_layer": "relu9"})
    with pytest.raises(ConfigError, match="no module 'layer3'"):
        trainer_with("at", [teacher_net()], **{"at.teacher_layers": "layer3"})
    with pytest.raises(ConfigError, match="paired in order"):
        trainer_with("at", [teacher_net()], **{"at.student_layers": "relu2,relu3", "at.teacher_layers": "relu3"})
    with pytest.raises(ConfigError, match="not a 2-D feature map"):
        trainer_with("fitnet", [teacher_net()], **{"fitnet.student_layer": "fc"})
