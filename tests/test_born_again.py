"""Born-Again networks: two generations against a hand loop, exact resume inside generation 2, refusals, the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from resprout.config import make_config
from resprout.engine.evaluation import evaluate
from resprout.engine.optim import OPTIM_KEYS, build_optimizer, set_lr
from resprout.errors import ConfigError
from resprout.methods.born_again import born_again_loss, student_seed
from resprout.models import build_model
from resprout.run import create_trainer, resume, train
from tests import reference as by_hand
from tests.conftest import synthetic
from tests.test_trainer import CRASH, Crash, assert_same_weights, metric_rows, weights


def rows(run_dir):
    """The stored metrics without wall-clock values."""
    return [r for r in metric_rows(run_dir) if "seconds" not in r[4]]


def soft_kl(student, teacher, t):
    """T^2 * KL(q_teacher || p_student), written out (not through kd_loss)."""
    q = torch.softmax(teacher / t, dim=1)
    return (q * (torch.log(q) - torch.log_softmax(student / t, dim=1))).sum(1).mean() * t * t


def test_born_again_loss_is_ce_plus_weighted_kl():
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.arange(6) % 5
    got = born_again_loss(s, t, y, temperature=2.0, weight=0.3)
    assert torch.allclose(got, F.cross_entropy(s, y) + 0.3 * soft_kl(s, t, 2.0), atol=1e-6)


def test_two_generations_equal_a_hand_loop():
    """Generation 1 is plain CE; generation 2 is a freshly drawn network trained on CE + KL against a frozen copy
    of generation 1's last weights (eval mode, no gradient)."""
    keys = synthetic(method="ban", generations=2, epochs=1, method_options={"ban": {"temperature": 2.0,
                                                                                  "weight": 0.5}})
    trainer = create_trainer(make_config(**keys), run_dir=None, run_id=None, store_path=None)
    model0 = copy.deepcopy(trainer.members["model"].model)
    result = trainer.fit()

    loader = trainer.train_loader
    steps = loader.steps(0, 0)

    def run_generation(model, g, teacher=None):  # torch's SGD and the cosine rate written out (tests/reference.py)
        opt = by_hand.sgd(model)
        model.train()
        for s in range(steps):
            x, y = loader.batch(g, 0, s)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = loss + 0.5 * soft_kl(logits, t_logits, 2.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            by_hand.step(opt, by_hand.LR * by_hand.cosine(s / steps, 1))
        return model

    gen1 = run_generation(model0, 0)
    teacher = copy.deepcopy(gen1).eval()
    torch.manual_seed(student_seed(0, 1))
    fresh = build_model("cnn", in_channels=1, num_classes=4, width=0.5)
    assert not torch.equal(fresh.conv1.weight, gen1.conv1.weight)
    gen2 = run_generation(fresh, 1, teacher)

    for name, ref in (("model", gen2), ("predecessor", teacher)):
        got = trainer.members[name].model.state_dict()
        for k, v in ref.state_dict().items():
            assert torch.equal(got[k], v), f"{name}.{k}"
    # per-generation metrics: N_1 (the plain baseline) and N_2
    gens = result["generations"]
    assert len(gens) == 2 and "predecessor" not in gens[0]
    test = trainer.eval_loaders["test"]
    assert gens[0]["model"]["test_top1"] == pytest.approx(evaluate(gen1, test)["top1"])
    assert gens[1]["model"]["test_top1"] == pytest.approx(evaluate(gen2, test)["top1"])


def test_first_generation_can_be_distilled_from_a_configured_teacher():
    """ban.first=teacher: generation 1 learns from teacher= with the same loss (here a wider CNN module)."""
    from resprout.methods.teachers import split_teacher_arg

    torch.manual_seed(5)
    big = build_model("cnn", in_channels=1, num_classes=4, width=1.0)
    entries, modules = split_teacher_arg(big)
    keys = synthetic(method="ban", generations=2, epochs=1, teacher=entries,
                     method_options={"ban": {"first": "teacher", "temperature": 3.0}})
    trainer = create_trainer(make_config(**keys), run_dir=None, run_id=None, store_path=None, teachers=modules)
    model0 = copy.deepcopy(trainer.members["model"].model)
    trainer.fit()
    loader, spec = trainer.train_loader, trainer.optim_spec(trainer.members["model"])
    steps = loader.steps(0, 0)
    opt = build_optimizer(model0, {k: spec[k] for k in OPTIM_KEYS})
    big.eval()
    model0.train()
    for s in range(steps):
        x, y = loader.batch(0, 0, s)
        logits = model0(x)
        with torch.no_grad():
            t_logits = big(x)
        loss = F.cross_entropy(logits, y) + soft_kl(logits, t_logits, 3.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        set_lr(opt, trainer.schedule.factor(s / steps, 1 / steps))
        opt.step()
    got = trainer.members["predecessor"].model.state_dict()  # generation 1's last weights
    for k, v in model0.state_dict().items():
        assert torch.equal(got[k], v), k
    with pytest.raises(ConfigError, match="needs a teacher"):
        train(**synthetic(method="ban", generations=2, method_options={"ban": {"first": "teacher"}}), save=False)


def test_crash_inside_generation_two_resumes_bit_identically(tmp_path):
    keys = synthetic(method="ban+test_crash", generations=2, epochs=2)
    full = train(**keys, methods=[Crash], out=tmp_path / "full")
    CRASH["at"] = (1, 0, 3)  # generation 2, epoch 1, after its third step: the teacher must come back
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(**keys, methods=[Crash], out=tmp_path / "crashed")
    resumed = resume(tmp_path / "crashed", methods=[Crash], progress="none")
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "crashed"))
    assert rows(tmp_path / "full") == rows(tmp_path / "crashed")
    assert resumed["generations"] == full["generations"]


def test_refusals():
    with pytest.raises(ConfigError, match="generations >= 2"):
        train(**synthetic(method="ban"), save=False)
    with pytest.raises(ConfigError, match="ban.temperature"):
        train(**synthetic(method="ban", generations=2, method_options={"ban": {"temperature": 0}}), save=False)
    with pytest.raises(ConfigError, match="model factory"):
        keys = synthetic(method="ban", generations=2)
        keys.pop("model"), keys.pop("width")
        train(**keys, module=build_model("cnn", in_channels=1, num_classes=4), save=False)


@pytest.mark.slow
def test_cli_contract(tmp_path, capsys):
    from resprout.cli import main

    code = main(["train", "method=ban", "model=cnn", "data=digits", "generations=2", "epochs=1", "threads=1",
                 "progress=none", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    result = json.loads(out.out)
    assert [sorted(g) for g in result["generations"]] == [["generation", "model"]] * 2
    before = sorted((tmp_path / "runs").iterdir())
    assert main(["train", "method=ban", "data=digits", "generations=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "generations >= 2" in err[0], err
    assert sorted((tmp_path / "runs").iterdir()) == before  # a refused run leaves no directory
