"""KTAN and DLN: the losses against their formulas; Algorithm 1 and Algorithm 2 (phases, step order, D's own
optimizer) against a hand-written loop; the discriminator never moved by the student's step; one teacher forward
per step with kd+ktan; line 12 as a separate classifier step; a pre-trained student; exact resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resprout
from resprout.config import make_config
from resprout.engine.checkpoint import WEIGHTS_FORMAT, load_file
from resprout.engine.method import Method
from resprout.engine.optim import OPTIM_KEYS, build_optimizer, set_lr
from resprout.errors import ConfigError, Interrupted
from resprout.methods.ktan import (
    Discriminator,
    adversarial_loss,
    discriminator_loss,
    feature_mse,
    pooled_head,
)
from resprout.models import build_model
from resprout.run import create_trainer
from tests.conftest import synthetic

ATOL = 1e-6  # the same terms summed in the same order; only float reassociation may differ


def teacher_net() -> nn.Module:
    torch.manual_seed(11)
    return build_model("cnn", in_channels=1, num_classes=4, width=1.0)


def trainer_with(method: str, teacher: nn.Module, **keys):
    cfg = make_config(**synthetic(method=method, teacher=["module:T"], **keys))
    return create_trainer(cfg, run_dir=None, run_id=None, store_path=None, teachers=[teacher],
                          methods=[m for m in (Recorder, StopAt, RateRecorder) if m.name in cfg.method_names()])


class Recorder(Method):
    """Records, after every update step, the step's name and copies of the student's and D's weights; counts
    teacher forwards per batch."""

    name = "test_ktan_recorder"
    log: list = []
    forwards: list = []
    grads: list = []

    def setup(self, trainer):
        self._count = [0]
        t = trainer.members["teacher"].model
        t.register_forward_hook(lambda m, i, o: self._count.__setitem__(0, self._count[0] + 1))

    def on_fit_start(self, trainer):
        self._count[0] = 0  # forwards of Algorithm 1 are not per-step ones

    def on_after_backward(self, trainer):
        if trainer.update_step is not None and trainer.update_step.name == "student":
            model = trainer.members["model"].model
            type(self).grads.append({n: p.grad is not None for n, p in model.named_parameters()})

    def on_after_step(self, trainer):
        # parameters only: BN running statistics move in each batch's forward, before the steps
        snap = {n: {k: v.detach().clone() for k, v in trainer.members[n].model.named_parameters()}
                for n in ("model", "discriminator")}
        type(self).log.append((trainer.update_step.name if trainer.update_step else "default", snap))

    def on_batch_end(self, trainer):
        type(self).forwards.append(self._count[0])
        self._count[0] = 0



class StopAt(Method):
    """Asks the trainer to stop (as SIGTERM would) after global step ``at`` once."""

    name = "test_ktan_stop"
    at: int | None = None

    def on_batch_end(self, trainer):
        step = trainer.epoch * trainer.train_loader.steps(0, 0) + trainer.step + 1
        if type(self).at is not None and step == type(self).at:
            type(self).at = None
            trainer.request_stop(15)



# -- pure pieces -------------------------------------------------------------------------------------------------------
def test_losses_equal_their_formulas():
    torch.manual_seed(0)
    rt, ms = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    assert torch.allclose(feature_mse(rt, ms), ((rt - ms) ** 2).sum() / (3 * 4 * 2 * 2))
    dt, ds = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    sig = torch.sigmoid
    assert torch.allclose(discriminator_loss(dt, ds), (-sig(dt).log()).mean() + (-(1 - sig(ds)).log()).mean(),
                          atol=1e-6)
    assert torch.allclose(adversarial_loss(ds, "nonsaturating"), (-sig(ds).log()).mean(), atol=1e-6)
    assert torch.allclose(adversarial_loss(ds, "minimax"), (1 - sig(ds)).log().mean(), atol=1e-6)
    assert torch.allclose(adversarial_loss(ds), (1 - sig(ds).clamp(max=0.5)).log().mean(), atol=1e-6)  # default
    with pytest.raises(ValueError, match="capped, minimax, nonsaturating"):
        adversarial_loss(ds, "hinge")
    d = Discriminator(8, 5)
    assert [type(m) for m in d.modules() if isinstance(m, nn.Conv2d)] == [nn.Conv2d, nn.Conv2d]
    assert d(torch.zeros(2, 8, 3, 3)).shape == (2, 1, 3, 3)


def test_capped_term_pushes_only_where_the_discriminator_is_not_fooled():
    """The fixed mechanism: the paper's minimax term pushes hardest where D already takes the student map for the
    teacher's (its gradient in the logit is -sigmoid(z), largest for z > 0, and never fades); the capped default
    has the same gradient where D still tells the student apart (z < 0) and none where it is fooled (z > 0)."""
    z = torch.tensor([-6.0, -2.0, -0.5, 0.5, 2.0, 6.0], requires_grad=True)
    n = len(z)
    (g_min,) = torch.autograd.grad(adversarial_loss(z, "minimax"), z)
    (g_cap,) = torch.autograd.grad(adversarial_loss(z, "capped"), z)
    by_hand = -1 / (1 + torch.exp(-z.detach())) / n  # d/dz of log(1 - sigmoid(z)), averaged over n
    assert torch.allclose(g_min, by_hand, atol=1e-7)
    fooled = z.detach() > 0
    assert torch.allclose(g_cap[~fooled], by_hand[~fooled], atol=1e-7) and torch.all(g_cap[fooled] == 0)
    assert g_min.abs().argmax() == n - 1  # minimax: the most fooled location gets the largest push
    # the value stops at log(1/2), the equilibrium D(m_s) = 1/2, instead of falling without bound
    assert torch.allclose(adversarial_loss(torch.full((3,), 50.0), "capped"), torch.tensor(-math.log(2.0)))
    assert adversarial_loss(torch.full((3,), 50.0), "minimax") < -49


# -- Algorithms 1 and 2 against a hand loop ----------------------------------------------------------------------------
def resnet_teacher() -> nn.Module:
    """A ResNet-20 teacher: on 8x8 images its last map (64 x 2 x 2) is smaller than the student's (32 x 4 x 4), so
    the regressor is the transposed conv, as with the Fashion-MNIST benchmark's ResNet-20 (7x7) and CNN (14x14)."""
    torch.manual_seed(11)
    return build_model("resnet20", in_channels=1, num_classes=4, width=1.0)


@pytest.mark.parametrize("make_teacher,regressor", [(teacher_net, nn.Conv2d), (resnet_teacher, nn.ConvTranspose2d)])
def test_ktan_equals_a_hand_loop_of_algorithms_1_and_2(make_teacher, regressor):
    t = make_teacher()
    trainer = trainer_with("ktan", t, epochs=1, **{"ktan.regressor_epochs": 0.5, "ktan.mse_epochs": 0.5})
    conv, relu = trainer.members["regressor"].model  # the student map relu3 is >= 0: a ReLU follows R
    assert type(conv) is regressor and isinstance(relu, nn.ReLU)
    # 64 -> 32 channels; the same 4x4 map (K = 1) or 2x2 -> 4x4 ((2 - 1) + K = 4: K = 3)
    assert (conv.in_channels, conv.out_channels) == (64, 32)
    assert conv.kernel_size == ((1, 1) if regressor is nn.Conv2d else (3, 3))
    ktan = next(m for m in trainer.methods if m.name == "ktan")
    student, disc, reg = (copy.deepcopy(trainer.members[n].model) for n in ("model", "discriminator", "regressor"))
    d_spec = trainer.optim_spec(trainer.members["discriminator"])
    assert (d_spec["lr"], d_spec["weight_decay"]) == (1e-2, 1e-4)  # the paper's adversarial settings
    trainer.fit()

    feats = {}
    student.relu3.register_forward_hook(lambda m, i, o: feats.__setitem__("s", o))
    t.get_submodule(ktan._t).register_forward_hook(lambda m, i, o: feats.__setitem__("t", o))
    loader = trainer.train_loader
    steps = loader.steps(0, 0)
    # Algorithm 1: R and a pooled linear head of width C_s learn CE with the teacher frozen
    torch.manual_seed(0 + 7919)
    head = pooled_head(32, 4)
    for p in reg.parameters():
        p.requires_grad_(True)
    opt_r = torch.optim.SGD(list(reg.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9,
                            weight_decay=1e-4)
    for i in range(steps // 2):
        x, y = loader.batch(0, 0, i)
        with torch.no_grad():
            t(x)
        m_t = feats["t"]
        if regressor is nn.ConvTranspose2d:  # written out: every input pixel scatters a 3x3 kernel onto a 4x4 map
            w = reg[0].weight  # (C_in, C_out, 3, 3)
            r = reg[0].bias.view(1, -1, 1, 1).expand(len(x), -1, 4, 4).clone()
            for a in range(2):
                for b in range(2):
                    r[:, :, a:a + 3, b:b + 3] += torch.einsum("nc,cokl->nokl", m_t[:, :, a, b], w)
            r = torch.relu(r)
            assert torch.allclose(r, reg(m_t), atol=1e-5)
        else:
            r = reg(m_t)
        loss = F.cross_entropy(head(r), y)
        opt_r.zero_grad()
        loss.backward()
        opt_r.step()
    for k, v in reg.state_dict().items():
        assert torch.allclose(trainer.members["regressor"].model.state_dict()[k], v, atol=ATOL), k

    # Algorithm 2: k steps of CE + beta MSE, then D's step and the student's step per batch
    s_spec = trainer.optim_spec(trainer.members["model"])
    opt_s = build_optimizer(student, {k: s_spec[k] for k in OPTIM_KEYS})
    opt_d = build_optimizer(disc, {k: d_spec[k] for k in OPTIM_KEYS})
    student.train()
    for s in range(steps):
        factor = trainer.schedule.factor(s / steps, 1 / steps)
        x, y = loader.batch(0, 0, s)
        logits = student(x)
        ms = feats["s"]
        with torch.no_grad():
            t(x)
            rt = reg(feats["t"])
        adversarial = s >= steps // 2
        if adversarial:
            d = disc(torch.cat([rt, ms.detach()]))
            opt_d.zero_grad(set_to_none=True)
            discriminator_loss(d[:len(x)], d[len(x):]).backward()
            set_lr(opt_d, factor)
            opt_d.step()
        loss = F.cross_entropy(logits, y) + 0.5 * F.mse_loss(ms, rt)
        if adversarial:
            # log(1 - min(D(m_s), 1/2)): the paper's minimax term, capped where D is fooled (the default)
            loss = loss + 0.6 * torch.log(1 - torch.sigmoid(disc(ms)).clamp(max=0.5)).mean()
        opt_s.zero_grad(set_to_none=True)
        torch.autograd.backward(loss, inputs=list(student.parameters()))
        set_lr(opt_s, factor)
        opt_s.step()
    for name, ref in (("model", student), ("discriminator", disc)):
        got = trainer.members[name].model.state_dict()
        for k, v in ref.state_dict().items():
            assert torch.allclose(got[k].float(), v.float(), atol=ATOL), f"{name}.{k}"


def test_each_step_moves_only_its_members_and_kd_ktan_forwards_the_teacher_once_per_step():
    Recorder.log, Recorder.forwards = [], []
    trainer = trainer_with("kd+ktan+test_ktan_recorder", teacher_net(), epochs=1,
                           **{"ktan.regressor_epochs": 0.25, "ktan.mse_epochs": 0.25})
    trainer.fit()
    steps = trainer.train_loader.steps(0, 0)
    names = [n for n, _ in Recorder.log]
    assert names == ["student"] * 2 + ["discriminator", "student"] * (steps - 2)
    prev = None
    for name, snap in Recorder.log:
        if prev is not None:
            changed = {m for m in snap if any(not torch.equal(snap[m][k], prev[m][k]) for k in snap[m])}
            assert changed == {"discriminator" if name == "discriminator" else "model"}, name
        prev = snap
    assert Recorder.forwards == [1] * steps  # kd and ktan, D's and the student's step share one teacher forward


def test_classifier_step_after_moves_s_then_c():
    Recorder.log, Recorder.grads = [], []
    trainer = trainer_with("ktan+test_ktan_recorder", teacher_net(), epochs=1,
                           **{"ktan.regressor_epochs": 0, "ktan.mse_epochs": 0.5, "ktan.classifier_step": "after"})
    trainer.fit()
    steps = trainer.train_loader.steps(0, 0)
    # joint phase: every parameter has a gradient; adversarial phase: the classifier (fc) has none in line 11
    assert all(all(g.values()) for g in Recorder.grads[:steps // 2])
    for g in Recorder.grads[steps // 2:]:
        assert not g["fc.weight"] and not g["fc.bias"] and g["conv1.weight"] and g["conv3.weight"]
    # ... and line 12 then moved the classifier: its weights change from batch to batch
    fc = [snap["model"]["fc.weight"] for name, snap in Recorder.log if name == "student"]
    assert all(not torch.equal(a, b) for a, b in zip(fc[steps // 2:], fc[steps // 2 + 1:]))


def test_dln_is_ce_plus_beta_mse_in_one_step():
    t = teacher_net()
    trainer = trainer_with("dln", t, epochs=1, **{"dln.regressor_epochs": 0, "dln.beta": 2.0})
    assert "discriminator" not in trainer.members
    student, reg = copy.deepcopy(trainer.members["model"].model), trainer.members["regressor"].model
    trainer.fit()
    feats = {}
    student.relu3.register_forward_hook(lambda m, i, o: feats.__setitem__("s", o))
    t.relu3.register_forward_hook(lambda m, i, o: feats.__setitem__("t", o))
    spec = trainer.optim_spec(trainer.members["model"])
    opt = build_optimizer(student, {k: spec[k] for k in OPTIM_KEYS})
    loader = trainer.train_loader
    steps = loader.steps(0, 0)
    for s in range(steps):
        x, y = loader.batch(0, 0, s)
        logits = student(x)
        with torch.no_grad():
            t(x)
            rt = reg(feats["t"])
        loss = F.cross_entropy(logits, y) + 2.0 * F.mse_loss(feats["s"], rt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        set_lr(opt, trainer.schedule.factor(s / steps, 1 / steps))
        opt.step()
    for k, v in student.state_dict().items():
        assert torch.allclose(trainer.members["model"].model.state_dict()[k].float(), v.float(), atol=ATOL), k


class RateRecorder(Method):
    """Records the student's learning rate at every student step."""

    name = "test_ktan_rates"
    rates: list = []

    def on_after_step(self, trainer):
        if trainer.update_step is not None and trainer.update_step.name == "student":
            type(self).rates.append(trainer.members["model"].optimizer.param_groups[0]["lr"])



def test_adversarial_lr_switches_the_students_rate_at_the_adversarial_phase():
    """The paper's adversarial rate (Sec. IV-A: 1e-2), scaled by the run's schedule from the first adversarial step;
    the discriminator keeps its own."""
    RateRecorder.rates = []
    trainer = trainer_with("ktan+test_ktan_rates", teacher_net(), epochs=2,
                           **{"ktan.regressor_epochs": 0, "ktan.mse_epochs": 0.5, "ktan.adversarial_lr": 0.01})
    trainer.fit()
    steps = trainer.train_loader.steps(0, 0)
    expected = []
    for g in range(2 * steps):
        cosine = 0.5 * (1 + math.cos(math.pi * (g / steps) / 2))  # the run's cosine over 2 epochs
        expected.append((0.05 if g < steps // 2 else 0.01) * cosine)  # synthetic(): lr 0.05
    assert RateRecorder.rates == pytest.approx(expected, rel=1e-9)
    d = trainer.members["discriminator"].optimizer.param_groups[0]
    assert d["initial_lr"] == 1e-2


# -- a pre-trained student; resume -------------------------------------------------------------------------------------
def test_pretrained_student_is_loaded_and_a_mismatched_one_refused(tmp_path):
    resprout.train(**synthetic(epochs=1), out=tmp_path / "student")
    best = load_file(tmp_path / "student" / "best-model.pt", WEIGHTS_FORMAT)["model"]
    trainer = trainer_with("ktan", teacher_net(), **{"ktan.student": str(tmp_path / "student")})
    for k, v in best.items():
        assert torch.equal(trainer.members["model"].model.state_dict()[k], v), k
    with pytest.raises(ConfigError, match="does not fit"):
        trainer_with("ktan", teacher_net(), width=1.0, **{"ktan.student": str(tmp_path / "student")})


def test_ktan_interrupted_mid_adversarial_phase_resumes_exactly(tmp_path):
    t = teacher_net()
    keys = synthetic(method="ktan+test_ktan_stop", epochs=2, **{"ktan.regressor_epochs": 0.5})
    StopAt.at = None
    resprout.train(**keys, teacher=t, methods=[StopAt], out=tmp_path / "whole")
    StopAt.at = 11  # epoch 2, step 3: adversarial
    with pytest.raises(Interrupted):
        resprout.train(**keys, teacher=t, methods=[StopAt], out=tmp_path / "cut")
    resprout.resume(tmp_path / "cut", teacher=t, methods=[StopAt])
    a, b = (load_file(tmp_path / d / "checkpoint.pt")["members"] for d in ("whole", "cut"))
    for member in ("model", "discriminator", "regressor"):
        for k, v in a[member]["model"].items():
            assert torch.equal(b[member]["model"][k], v), f"{member}.{k}"
