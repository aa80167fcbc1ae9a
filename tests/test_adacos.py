"""AdaCos (Zhang et al., CVPR 2019): the scale against the paper's formula by hand, the cosine head, the task loss
recorded in training against a hand computation, evaluation on cosine logits, refusals, resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.adacos import (CosineClassifier, adaptive_scale, attach_cosine_classifier, cosine_logits,
                                     fixed_scale)
from resprout.models import build_model
from resprout.run import resume, train
from tests.conftest import synthetic
from tests.test_trainer import CRASH, Crash, assert_same_weights, metric_rows, weights


def hand_scale(cos: list[list[float]], labels: list[int], s_prev: float) -> float:
    """Eq. 15-16 of the AdaCos paper with plain Python: B_avg over the non-target classes with the previous scale,
    the (lower) median target angle, s = log(B_avg) / cos(min(pi/4, theta_med))."""
    n = len(labels)
    b_avg = sum(math.exp(s_prev * c) for i, row in enumerate(cos) for k, c in enumerate(row) if k != labels[i]) / n
    angles = sorted(math.acos(cos[i][labels[i]]) for i in range(n))
    theta_med = angles[(n - 1) // 2]
    return math.log(b_avg) / math.cos(min(math.pi / 4, theta_med))


def hand_cosines(features: torch.Tensor, weight: torch.Tensor) -> list[list[float]]:
    out = []
    for x in features.tolist():
        nx = math.sqrt(sum(v * v for v in x))
        row = []
        for w in weight.tolist():
            nw = math.sqrt(sum(v * v for v in w))
            row.append(sum(a * b for a, b in zip(x, w)) / (nx * nw))
        out.append(row)
    return out


def test_fixed_scale_is_sqrt2_log_c_minus_1():
    assert fixed_scale(10) == pytest.approx(math.sqrt(2) * math.log(9))
    with pytest.raises(ConfigError, match="at least 3 classes"):
        fixed_scale(2)


@pytest.mark.parametrize("n", [7, 8])
def test_adaptive_scale_matches_the_papers_formula_computed_by_hand(n):
    g = torch.Generator().manual_seed(n)
    cos = torch.rand(n, 5, generator=g) * 1.6 - 0.8
    labels = torch.randint(0, 5, (n,), generator=g)
    s_prev = 2.7
    got = adaptive_scale(cos, labels, s_prev)
    assert got == pytest.approx(hand_scale(cos.double().tolist(), labels.tolist(), s_prev), rel=1e-10)
    # a hard batch (targets at large angles, as at the start of training) has theta_med clipped at pi/4
    hard = cos.clone()
    hard[torch.arange(n), labels] = -0.5
    b_avg = sum(math.exp(s_prev * c) for i, row in enumerate(hard.double().tolist()) for k, c in enumerate(row)
                if k != labels[i]) / n
    assert adaptive_scale(hard, labels, s_prev) == pytest.approx(math.log(b_avg) / math.cos(math.pi / 4), rel=1e-5)


def test_cosine_head_replaces_the_class_layer_and_computes_scaled_cosines():
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, num_classes=10, width=0.5)
    old = model.fc.weight.detach().clone()
    head = attach_cosine_classifier(model, torch.zeros(2, 1, 8, 8), scale=3.0)
    assert model.fc is head and isinstance(head, CosineClassifier) and head.bias is None
    assert torch.equal(head.weight, old)  # starts from the class layer's weight
    feats = {}
    model.fc.register_forward_hook(lambda m, i, o: feats.update(x=i[0]))
    x = torch.randn(4, 1, 8, 8)
    out = model.eval()(x)
    expected = 3.0 * torch.tensor(hand_cosines(feats["x"], head.weight.detach()))
    assert torch.allclose(out, expected, atol=1e-5)
    conv_head = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ConfigError, match="needs a network whose output comes straight from an nn.Linear"):
        attach_cosine_classifier(conv_head, torch.zeros(2, 1, 8, 8), 3.0)


class AdaCosProbe(Method):
    """Listed after adacos: recomputes every step's AdaCos term by hand from the classifier's input features, and
    every evaluation's top-1 from hand cosine logits."""

    name = "test_adacos_probe"
    log: dict = {}

    def setup(self, trainer):
        trainer.tap("model", "fc", inputs=True)
        AdaCosProbe.log = {"terms": [], "evals": []}

    def on_batch_start(self, trainer):
        self.s_prev = float(trainer.members["model"].model.fc.scale)

    def on_loss(self, trainer):
        head = trainer.members["model"].model.fc
        feats = trainer.taps.input("model", "fc").detach()
        labels = trainer.targets.tolist()
        cos = hand_cosines(feats, head.weight.detach())
        s = hand_scale(cos, labels, self.s_prev)
        expected = sum(-(s * cos[i][y]) + math.log(sum(math.exp(s * c) for c in cos[i]))
                       for i, y in enumerate(labels)) / len(labels)
        term = [float(v.detach()) for m, name, v in trainer.terms if m == "model" and name == "adacos"]
        AdaCosProbe.log["terms"].append((term, expected, s, float(head.scale)))

    def on_after_evaluate(self, trainer):
        model = trainer.members["model"].model
        hits = total = 0
        with torch.no_grad():
            model.eval()
            for x, y in trainer.eval_loaders["test"]:
                model(x)
                cos = cosine_logits(trainer.taps.input("model", "fc"), model.fc.weight)
                hits += int((cos.argmax(1) == y).sum())
                total += len(y)
            model.train()
        AdaCosProbe.log["evals"].append((trainer.last_eval["model"]["test"]["top1"], hits / total))



def test_training_loss_is_cross_entropy_on_adaptively_scaled_cosines_and_evaluation_uses_them():
    result = train(**synthetic(method="adacos+test_adacos_probe", epochs=2), methods=[AdaCosProbe], save=False)
    log = AdaCosProbe.log
    assert len(log["terms"]) == 16
    for term, expected, s, stored in log["terms"]:
        assert term == [pytest.approx(expected, rel=1e-4)]  # exactly one task term, the hand value
        assert stored == pytest.approx(s, rel=1e-6)  # the head keeps s^(t) for the next step
    assert len({round(s, 6) for _, _, s, _ in log["terms"]}) > 1  # the scale adapts
    assert len(log["evals"]) == 2
    for reported, by_hand in log["evals"]:
        assert reported == by_hand  # top-1 of the cosine logits, not of a linear layer
    assert result["final"]["model"]["top1"] > 0.3


def test_fixed_scale_option_keeps_the_initial_scale():
    train(**synthetic(method="adacos+test_adacos_probe", epochs=1, method_options={"adacos": {"scale": "fixed"}}),
          methods=[AdaCosProbe], save=False)
    # synthetic data has 4 classes: s = sqrt(2) * log(3) at every step
    terms = AdaCosProbe.log["terms"]
    assert terms and all(stored == pytest.approx(math.sqrt(2) * math.log(3)) for *_, stored in terms)


def test_adacos_resumes_exactly_with_its_scale(tmp_path):
    keys = synthetic(method="adacos+test_crash", epochs=2)
    train(**keys, methods=[Crash], out=tmp_path / "full")
    CRASH["at"] = (0, 1, 3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(**keys, methods=[Crash], out=tmp_path / "crashed")
    resume(tmp_path / "crashed", methods=[Crash], progress="none")
    full, crashed = weights(tmp_path / "full"), weights(tmp_path / "crashed")
    assert "fc.scale" in full["model"]["model"]
    assert_same_weights(full, crashed)
    assert metric_rows(tmp_path / "full") == metric_rows(tmp_path / "crashed")


def test_a_two_class_problem_is_refused_at_the_start():
    keys = synthetic(method="adacos")
    keys["data_options"] = dict(keys["data_options"], num_classes=2)
    with pytest.raises(ConfigError, match="at least 3 classes"):
        train(**keys, save=False)


def test_an_adacos_run_loads_as_a_teacher_with_its_cosine_head_and_scale(tmp_path):
    """The head is recorded as setup surgery, so a network rebuilt from the run's weights file (a teacher, the
    reproduction's cost profile) gives the logits of the trainer's own network read back by ``open_run``."""
    from resprout.engine.rundir import SavedRun
    from resprout.methods.teachers import load_run_model
    from resprout.run import open_run

    run_dir = train(**synthetic(method="adacos", epochs=1), out=tmp_path / "run")["run_dir"]
    assert [(r["op"], r["args"]) for r in SavedRun.open(run_dir).weights()[1]] == [
        ("cosine_classifier", {"input_shape": [1, 8, 8]})]
    rebuilt, _ = load_run_model(run_dir, in_channels=1, num_classes=4)
    trained = open_run(run_dir).members["model"].model
    assert isinstance(rebuilt.fc, CosineClassifier)
    assert float(rebuilt.fc.scale) == float(trained.fc.scale) != fixed_scale(4)  # the adapted scale, loaded
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(rebuilt.eval()(x), trained.eval()(x))


def test_a_checkpoint_without_the_setup_surgery_is_refused_on_resume(tmp_path):
    """A checkpoint whose history does not start with the surgery the methods' setup applies (written before the
    head was recorded) is refused in one line, the run left as it was."""
    from resprout.errors import CheckpointError

    keys = synthetic(method="adacos+test_crash", epochs=2)
    CRASH["at"] = (0, 1, 3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(**keys, methods=[Crash], out=tmp_path / "crashed")
    path = tmp_path / "crashed" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    assert [r["op"] for r in state["surgery"]] == ["cosine_classifier"]
    state["surgery"] = []
    torch.save(state, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"does not start with the surgery of this run's setup "
                                              r"\(model: cosine_classifier\)"):
        resume(tmp_path / "crashed", methods=[Crash], progress="none")
    assert path.read_bytes() == before
