"""Methods composed in one run (issue #11): ``ke+ls``, ``ke+cskd``, ``ke+adacos``, ``nr+dsd``, ``graft+kd``.

Each run records, at every step, the loss terms every member got and recomputes them by hand (plain Python on the
step's logits), so a term that acts on the wrong member, the wrong batch or with the wrong formula fails; and
checks what the non-loss method did: KE re-initialized only the reset hypothesis (of the cosine weight too), DSD's
mask followed NR's surgery (kept channels keep their pruned positions, new channels are not pruned), grafting and
distillation never touched the teacher.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from resprout.engine.method import Method
from resprout.methods.adacos import CosineClassifier, attach_cosine_classifier
from resprout.methods.evolution import fit_hypothesis, kels_masks
from resprout.models import build_model
from resprout.run import train
from tests.conftest import synthetic
from tests.test_adacos import hand_cosines, hand_scale


def log_softmax(row: list[float], t: float = 1.0) -> list[float]:
    z = [v / t for v in row]
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def hand_ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    rows, ys = logits.detach().double().tolist(), labels.tolist()
    return sum(-log_softmax(r)[y] for r, y in zip(rows, ys)) / len(ys)


def hand_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    """T^2 * mean_i sum_k q_k (log q_k - log p_k), p = softmax(student/T), q = softmax(teacher/T)."""
    total = 0.0
    for s, q in zip(student.detach().double().tolist(), teacher.detach().double().tolist()):
        lp, lq = log_softmax(s, t), log_softmax(q, t)
        total += sum(math.exp(b) * (b - a) for a, b in zip(lp, lq))
    return t * t * total / len(student)


def method_named(trainer, name):
    return next(m for m in trainer.methods if m.name == name)


class Probe(Method):
    """Listed last: every step's terms (member, name, value) next to the hand values of ``Probe.hand``."""

    name = "test_composition_probe"
    hand = None  # callable(probe, trainer) -> {(member, term): value}
    log: dict = {}

    def setup(self, trainer):
        Probe.log = {"steps": [], "ke": []}
        if Probe.hand is hand_adacos:
            trainer.tap("model", "fc", inputs=True)

    def on_batch_start(self, trainer):
        self.partners = getattr(method_named(trainer, "cskd"), "_partners", None) if any(
            m.name == "cskd" for m in trainer.methods) else None
        if any(m.name == "adacos" for m in trainer.methods):
            self.s_prev = float(trainer.members["model"].model.fc.scale)
        if trainer.step == 0 and trainer.generation > 0 and any(m.name == "ke" for m in trainer.methods):
            ke = method_named(trainer, "ke")
            params = dict(trainer.members["model"].model.named_parameters())
            for n, mask in ke.masks.items():
                Probe.log["ke"].append((n, torch.equal(params[n][mask], self.end[n][mask]),
                                        bool((params[n][~mask] != self.end[n][~mask]).all())))

    def on_loss(self, trainer):
        got = {(m, n): float(v.detach()) for m, n, v in trainer.terms}
        Probe.log["steps"].append((got, Probe.hand(self, trainer)))

    def on_generation_end(self, trainer):
        if "model" in trainer.members:
            self.end = {n: p.detach().clone() for n, p in trainer.members["model"].model.named_parameters()}



def check_terms(steps: int) -> None:
    log = Probe.log["steps"]
    assert len(log) == steps
    for got, expected in log:
        assert got.keys() == expected.keys()  # no term on another member, no extra term
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def check_ke_reinit() -> None:
    assert Probe.log["ke"]
    for name, fit_kept, reset_changed in Probe.log["ke"]:
        assert fit_kept and reset_changed, name


# -- KE + label smoothing, CS-KD, AdaCos -------------------------------------------------------------------------------
def hand_ls(probe, trainer):
    out, eps = {}, 0.1
    for m in ("model",):
        rows, ys = trainer.outputs[m].detach().double().tolist(), trainer.targets.tolist()
        total = 0.0
        for r, y in zip(rows, ys):
            lp = log_softmax(r)
            total += (1 - eps) * -lp[y] + eps * -sum(lp) / len(lp)
        out[(m, "ls")] = total / len(ys)
    return out


def test_ke_with_label_smoothing():
    Probe.hand = hand_ls
    train(**synthetic(method="ke+ls+test_composition_probe", generations=2, epochs=1), methods=[Probe], save=False)
    check_terms(16)
    check_ke_reinit()


def hand_cskd(probe, trainer):
    model = copy.deepcopy(trainer.members["model"].model)  # a copy: the probe must not move BN statistics
    with torch.no_grad():
        partner_logits = model(probe.partners)
    logits = trainer.outputs["model"]
    assert len(logits) == len(probe.partners) == len(trainer.targets)  # CE and CS-KD on the anchors only
    return {("model", "ce"): hand_ce(logits, trainer.targets),
            ("model", "cskd"): 3.0 * hand_kl(logits, partner_logits, 4.0)}


def test_ke_with_class_wise_self_distillation():
    Probe.hand = hand_cskd
    train(**synthetic(method="ke+cskd+test_composition_probe", generations=2, epochs=1), methods=[Probe],
          save=False)
    check_terms(16)  # the class-pair sampler: 8 batches of 32 anchors (+ 32 partners) per epoch
    check_ke_reinit()


def hand_adacos(probe, trainer):
    head = trainer.members["model"].model.fc
    labels = trainer.targets.tolist()
    cos = hand_cosines(trainer.taps.input("model", "fc").detach(), head.weight.detach())
    s = hand_scale(cos, labels, probe.s_prev)
    ce = sum(-(s * cos[i][y]) + math.log(sum(math.exp(s * c) for c in cos[i])) for i, y in enumerate(labels))
    return {("model", "adacos"): ce / len(labels)}


def test_ke_with_adacos_splits_the_cosine_weight_like_the_classifier():
    Probe.hand = hand_adacos
    result = train(**synthetic(method="ke+adacos+test_composition_probe", generations=2, epochs=1,
                               method_options={"ke": {"split_rate": 0.5}}), methods=[Probe], save=False)
    check_terms(16)
    check_ke_reinit()
    names = {n for n, *_ in Probe.log["ke"]}
    assert "fc.weight" in names  # the cosine weight is split and re-initialized like the classifier
    # its KELS mask: every class row, the first ceil(s_r * d) feature columns (as KE's own classifier rule)
    model = build_model("cnn", in_channels=1, num_classes=4, width=0.5)
    attach_cosine_classifier(model, torch.zeros(2, 1, 8, 8), 1.0)
    mask = kels_masks(model, (1, 8, 8), 0.5)["fc.weight"]
    d = mask.shape[1]
    assert mask[:, : math.ceil(d / 2)].all() and not mask[:, math.ceil(d / 2):].any()
    for g in result["generations"]:
        assert 0 <= g["model"]["slim_top1"] <= 1  # the slim network carries the cosine head


def test_kes_slim_network_of_an_adacos_run_keeps_the_cosine_head():
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, num_classes=4, width=0.5)
    attach_cosine_classifier(model, torch.zeros(2, 1, 8, 8), 2.0)
    slim = fit_hypothesis(model, (1, 8, 8), 0.5)
    assert isinstance(slim.fc, CosineClassifier) and slim.fc.weight.shape == (4, math.ceil(model.fc.in_features / 2))
    feats = {}
    slim.fc.register_forward_hook(lambda m, i, o: feats.update(x=i[0]))
    out = slim.eval()(torch.randn(3, 1, 8, 8))
    assert torch.allclose(out, 2.0 * torch.tensor(hand_cosines(feats["x"], slim.fc.weight.detach())), atol=1e-5)


# -- NR + DSD ----------------------------------------------------------------------------------------------------------
class KillChannels(Method):
    """Listed first: in the middle of the sparse phase, zero the BN scale of half the channels of bn1 and bn2, so
    NR's next utilization check finds them dead and rebuilds the network (inside DSD's sparse phase)."""

    name = "test_kill_channels"

    def on_batch_end(self, trainer):
        if (trainer.epoch, trainer.step) == (1, 2):
            model = trainer.members["model"].model
            with torch.no_grad():
                for bn in (model.bn1, model.bn2):
                    bn.weight[: bn.num_features // 2] = 0.0


class ResizeProbe(Method):
    """Listed between dsd and the end: DSD's masks before and after NR's surgery, and the raw optimizer steps
    after it (before dsd re-applies its mask)."""

    name = "test_resize_probe"
    log: dict = {}

    def on_fit_start(self, trainer):
        ResizeProbe.log = {"resized": [], "violations": 0, "steps_after": 0}

    def on_batch_start(self, trainer):
        masks = method_named(trainer, "dsd").masks
        events = ResizeProbe.log["resized"]
        if events and "after" not in events[-1]:  # dsd carried its masks after this probe saw the surgery
            events[-1]["after"] = {n: m.clone() for n, m in masks.items()}
        self.before = {n: m.clone() for n, m in masks.items()}

    def on_member_resized(self, trainer):
        dsd = method_named(trainer, "dsd")
        params = dict(trainer.members["model"].model.named_parameters())
        ResizeProbe.log["resized"].append({
            "phase": dsd.phase(trainer), "before": self.before,
            "maps": dict(trainer.resized_maps or {}), "shapes": {n: p.shape for n, p in params.items()}})

    def on_after_step(self, trainer):
        dsd = method_named(trainer, "dsd")
        if ResizeProbe.log["resized"] and dsd.masks:
            params = dict(trainer.members["model"].model.named_parameters())
            ResizeProbe.log["steps_after"] += 1
            ResizeProbe.log["violations"] += sum(int((params[n][~m] != 0).sum()) for n, m in dsd.masks.items())


def test_dsd_masks_follow_neural_rejuvenations_surgery():
    result = train(**synthetic(method="test_kill_channels+nr+test_resize_probe+dsd", epochs=3, momentum=0.9,
                               method_options={"dsd": {"dense_epochs": 1, "sparse_epochs": 1},
                                               "nr": {"every": 1.5, "threshold": 0.9}}),
                   methods=[KillChannels, ResizeProbe], save=False)
    assert result["rejuvenation"]["count"] == 1
    (event,) = ResizeProbe.log["resized"]
    assert event["phase"] == "sparse"
    before, after, maps = event["before"], event["after"], event["maps"]
    assert maps and set(after) == set(before)
    assert any(-1 in index for m in maps.values() for index in m.values())  # NR added channels
    for name, mask in after.items():
        assert mask.shape == event["shapes"][name]
        index = maps.get(name, {})
        # hand remap: each new entry is the old entry it came from, a new channel (-1) is not pruned
        expected = torch.ones(mask.shape, dtype=torch.bool)
        for pos in torch.cartesian_prod(*[torch.arange(s) for s in mask.shape]).tolist():
            old = [index.get(d, list(range(mask.shape[d])))[i] for d, i in enumerate(pos)]
            if all(o >= 0 for o in old):
                expected[tuple(pos)] = before[name][tuple(old)]
        assert torch.equal(mask, expected), name
    assert ResizeProbe.log["steps_after"] > 0 and ResizeProbe.log["violations"] == 0


# -- Grafting + KD (Grafting+) -----------------------------------------------------------------------------------------
def hand_graft_kd(probe, trainer):
    teacher = trainer.members["teacher"].model
    with torch.no_grad():
        t_logits = teacher(trainer.inputs)
    out = {}
    for peer in ("peer_1", "peer_2"):
        logits, labels = trainer.outputs[peer], trainer.targets_of(peer)
        t = t_logits if trainer.inputs_of(peer) is trainer.inputs else teacher(trainer.inputs_of(peer)).detach()
        out[(peer, "ce")] = 0.1 * hand_ce(logits, labels)
        out[(peer, "kd")] = 0.9 * hand_kl(logits, t, 4.0)
    return out


def test_grafting_with_distillation_trains_every_peer_on_kd_and_never_touches_the_teacher():
    torch.manual_seed(5)
    teacher = build_model("cnn", in_channels=1, num_classes=4, width=0.5)
    before = copy.deepcopy(teacher.state_dict())
    Probe.hand = hand_graft_kd
    result = train(**synthetic(method="graft+kd+test_composition_probe", epochs=2), teacher=teacher,
                   methods=[Probe], save=False)
    check_terms(16)
    assert {"peer_1", "peer_2"} <= set(result["final"])
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen: not trained, not grafted
