"""The engine's services, each proven by a small consumer (tests/engine_methods.py): update steps with a manual
member, per-member optimizer settings from the config, surgery that carries optimizer state, the resize event and
feature taps through it, exact resume after SIGKILL following mid-epoch surgery, and model factories."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from resprout.config import make_config
from resprout.engine.checkpoint import load_file
from resprout.engine.optim import build_optimizer, set_lr
from resprout.errors import ConfigError
from resprout.run import create_trainer, resume, train
from tests import engine_methods as em
from tests import reference as by_hand
from tests.conftest import HANG_GUARD, PYTHON, ROOT, cli_env, synthetic
from tests.test_trainer import assert_same_weights, metric_rows


def trainer_of(method=None, **keys):
    """The trainer of a tiny synthetic run; ``method``: a Method class, passed as an object (not registered)."""
    if method is not None:
        keys["method"] = method.name
    return create_trainer(make_config(**synthetic(**keys)), run_dir=None, run_id=None, store_path=None,
                          methods=[method] if method is not None else [])


# -- update steps ------------------------------------------------------------------------------------------------------
def test_adversarial_steps_equal_a_hand_written_loop_and_never_touch_unnamed_members():
    trainer = trainer_of(em.ToyAdversarial, epochs=1)
    student0 = copy.deepcopy(trainer.members["model"].model)
    disc0 = copy.deepcopy(trainer.members["discriminator"].model)
    em.ToyAdversarial.snapshots = []
    trainer.fit()
    snaps, em.ToyAdversarial.snapshots = em.ToyAdversarial.snapshots, None

    # every step changes exactly the member it names
    previous = {n: dict(m.named_parameters()) for n, m in (("model", student0), ("discriminator", disc0))}
    for step, states in snaps:
        changed = {n for n in states if any(not torch.equal(states[n][k], previous[n][k]) for k in states[n])}
        named = "discriminator" if step == "discriminator" else "model"
        assert changed == {named}, (step, changed)
        previous = states
    assert [s for s, _ in snaps[:4]] == ["discriminator", "student"] * 2

    # the same computation written by hand
    student, disc = student0, disc0
    spec = trainer.optim_spec(trainer.members["model"])
    opt_s, opt_d = (build_optimizer(m, {k: spec[k] for k in spec if k in trainer_optim_keys()}) for m in (student, disc))
    feats = {}
    student.relu3.register_forward_hook(lambda mod, i, o: feats.__setitem__("f", o))
    loader = trainer.train_loader
    steps = loader.steps(0, 0)
    student.train()
    disc.train()
    for s in range(steps):
        x, y = loader.batch(0, 0, s)
        factor = trainer.schedule.factor(s / steps, 1 / steps)
        logits = student(x)
        f = feats["f"]
        real = torch.tanh(F.adaptive_avg_pool2d(x[:, :1], f.shape[2:])).expand_as(f)
        opt_d.zero_grad(set_to_none=True)
        em.adversarial_losses(disc(real), disc(f.detach())).backward()
        set_lr(opt_d, factor)
        opt_d.step()
        opt_s.zero_grad(set_to_none=True)
        loss = F.cross_entropy(logits, y) + 0.1 * F.binary_cross_entropy_with_logits(disc(f), torch.ones(len(f), 1))
        torch.autograd.backward(loss, inputs=list(student.parameters()))
        set_lr(opt_s, factor)
        opt_s.step()
    for name, ref in (("model", student), ("discriminator", disc)):
        got = trainer.members[name].model.state_dict()
        for k, v in ref.state_dict().items():
            assert torch.equal(got[k], v), f"{name}.{k}"


def trainer_optim_keys():
    from resprout.engine.optim import OPTIM_KEYS

    return OPTIM_KEYS


def test_the_default_step_is_unchanged_when_no_method_declares_steps():
    """One step over all terms: a plain run equals a hand loop of CE, backward, SGD step (torch's SGD built here,
    the cosine rate by its formula, over two epochs)."""
    trainer = trainer_of(epochs=2)
    model = copy.deepcopy(trainer.members["model"].model)
    trainer.fit()
    opt = by_hand.sgd(model)
    steps = trainer.train_loader.steps(0, 0)
    model.train()
    for e in range(2):
        for s in range(steps):
            x, y = trainer.train_loader.batch(0, e, s)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            by_hand.step(opt, by_hand.LR * by_hand.cosine(e + s / steps, 2))
    for k, v in model.state_dict().items():
        assert torch.equal(trainer.members["model"].model.state_dict()[k], v), k


def test_member_optimizer_and_schedule_come_from_the_config():
    trainer = trainer_of(em.ToyAdversarial, epochs=2, member_options={
        "discriminator": {"optimizer": "adam", "lr": "0.002", "schedule": "constant"}})
    trainer.fit()
    d = trainer.members["discriminator"]
    assert type(d.optimizer).__name__ == "Adam" and d.optimizer.param_groups[0]["lr"] == 0.002  # constant: no decay
    s = trainer.members["model"]
    assert type(s.optimizer).__name__ == "SGD" and s.optimizer.param_groups[0]["lr"] < 0.05 * 0.1  # cosine at the end


def test_member_keys_on_the_command_line_are_typed_and_validated():
    from resprout.config import load_config

    cfg = load_config(None, ["member.discriminator.lr=0.001", "member.discriminator.optimizer=adam"])
    assert cfg.member_options == {"discriminator": {"lr": 0.001, "optimizer": "adam"}}
    with pytest.raises(ConfigError, match="unknown key member.discriminator.foo"):
        load_config(None, ["member.discriminator.foo=1"])
    with pytest.raises(ConfigError, match="bad value for member.d.lr"):
        load_config(None, ["member.d.lr=-1"])
    with pytest.raises(ConfigError, match="expected member.<name>.<key>"):
        load_config(None, ["member.lr=1"])
    with pytest.raises(ConfigError, match="no member 'critic'"):
        trainer_of(em.ToyAdversarial, member_options={"critic": {"lr": 0.1}})
    assert make_config().fingerprint() == make_config(member_options={}).fingerprint()


def test_a_term_for_a_member_its_step_does_not_train_is_refused():
    from resprout.engine.members import UpdateStep
    from resprout.engine.method import Method

    class Wrong(em.ToyAdversarial):
        name = "test_wrong_steps"

        def update_steps(self, trainer):
            return [UpdateStep("discriminator", ["discriminator"], ("d",))]

        def on_loss(self, trainer):
            trainer.add_loss("model", "ce", F.cross_entropy(trainer.outputs["model"], trainer.targets))

    assert Method.update_steps(Wrong(), None) is None
    with pytest.raises(ConfigError, match="does not train it"):
        trainer_of(Wrong, epochs=1).fit()


# -- surgery: optimizer state, event, taps -----------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_surgery_carries_optimizer_state_through_the_index_map(optimizer):
    trainer = trainer_of(em.ToyAdversarial, epochs=1, optimizer=optimizer)
    trainer.fit()  # optimizer state exists now
    trainer.started = True
    member = trainer.members["model"]
    old = {n: {k: v.clone() for k, v in member.optimizer.state[p].items()}
           for n, p in member.model.named_parameters()}
    c = member.model.conv3.out_channels
    em.GrowMidEpoch.resized = []
    em.grow_conv3(trainer, extra=2, seed=0)
    new = member.model
    assert new.conv3.out_channels == c + 2
    for n, p in new.named_parameters():
        state = member.optimizer.state[p]
        for key, value in old[n].items():
            if value.dim() == 0:
                assert torch.equal(state[key], value)  # Adam's step count
            elif n in ("conv3.weight", "bn3.weight", "bn3.bias"):
                assert torch.equal(state[key][:c], value) and not state[key][c:].any()
            elif n == "fc.weight":
                assert torch.equal(state[key][:, :c], value) and not state[key][:, c:].any()
            else:
                assert torch.equal(state[key], value)
    # feature taps follow the new module: the tapped map has the new width
    trainer.taps.clear()
    new.eval()
    new(trainer.train_loader.batch(0, 0, 0)[0])
    assert trainer.taps.output("model", "relu3").shape[1] == c + 2


@pytest.mark.slow
def test_surgery_mid_epoch_then_sigkill_then_resume_is_bit_identical(tmp_path):
    """Exact points (RESPROUT_FAULT): Ctrl-C two steps after the surgery (a mid-epoch checkpoint that holds it),
    then, resumed from there, SIGKILL right after the next checkpoint (the epoch's end, the surgery replayed)."""
    keys = dict(synthetic(method="test_grow_mid_epoch", epochs=4, checkpoint_minutes=0, seed=5))
    em.GrowMidEpoch.resized = []
    train(**keys, methods=[em.GrowMidEpoch], out=tmp_path / "full")
    assert em.GrowMidEpoch.resized == [("model", False)]
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.engine_methods import GrowMidEpoch; "
              f"import resprout; resprout.{{}}")
    run = tmp_path / "run"
    train_call = script.format(f"train(**{keys!r}, methods=[GrowMidEpoch], out={str(run)!r})")
    resume_call = script.format(f"resume({str(run)!r}, methods=[GrowMidEpoch], progress='none')")
    steps = 8  # per epoch: 256 images in batches of 32; the surgery is at epoch 2, step 3
    stopped = subprocess.run([PYTHON, "-c", train_call], env=cli_env(tmp_path, f"interrupt-after-step:{steps + 5}"),
                             capture_output=True, text=True, timeout=HANG_GUARD)
    assert "interrupted at generation 1 epoch 2 step 5" in stopped.stderr, stopped.stderr[-2000:]
    state = load_file(run / "checkpoint.pt")
    assert state["position"]["step"] == 5 and state["surgery"][0]["step"] == 3
    killed = subprocess.run([PYTHON, "-c", resume_call], env=cli_env(tmp_path, "kill-after-checkpoint:1"),
                            capture_output=True, text=True, timeout=HANG_GUARD)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = load_file(run / "checkpoint.pt")
    assert not state["position"]["finished"] and state["surgery"][0]["step"] == 3
    assert (state["position"]["epoch"], state["position"]["step"]) == (2, 0)
    resumed = subprocess.run([PYTHON, "-c", resume_call], env=cli_env(tmp_path), capture_output=True, text=True,
                             timeout=HANG_GUARD)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(load_file(tmp_path / "full" / "checkpoint.pt")["members"],
                        load_file(run / "checkpoint.pt")["members"])
    assert metric_rows(tmp_path / "full") == metric_rows(run)


# -- model factories ----------------------------------------------------------------------------------------------------
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_a_model_factory_is_seeded_and_lets_methods_draw_fresh_networks(tmp_path):
    keys = synthetic(epochs=1)
    keys.pop("model"), keys.pop("width")
    a = create_trainer(make_config(**keys, seed=1), run_dir=None, run_id=None, store_path=None, module=Net)
    b = create_trainer(make_config(**keys, seed=1), run_dir=None, run_id=None, store_path=None, module=Net)
    c = create_trainer(make_config(**keys, seed=2), run_dir=None, run_id=None, store_path=None, module=Net)
    wa, wb, wc = (t.members["model"].model.conv.weight for t in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.config.model == "custom:Net"
    torch.manual_seed(9)
    ref = Net()
    assert torch.equal(a.new_model(9).conv.weight, ref.conv.weight)
    # KE re-draws the reset hypothesis from the initial distribution of a custom model
    result = train(**keys, module=Net, method="ke", generations=2, method_options={"ke": {"reinit": "initial",
                                                                                          "split": "wels"}},
                   save=False)
    assert len(result["generations"]) == 2
    with pytest.raises(ConfigError, match="model factory"):
        train(**keys, module=Net(), method="ke", generations=2,
              method_options={"ke": {"reinit": "initial", "split": "wels"}}, save=False)


@pytest.mark.slow
def test_pure_functions_load_neither_the_trainer_nor_data_nor_models_nor_every_method(tmp_path):
    code = ("import sys\n"
            "from resprout.methods.classification import smooth_cross_entropy\n"
            "from resprout.methods.distill import kd_loss\n"
            "from resprout.methods.evolution.hypotheses import kels_masks, reinitialize\n"
            "from resprout.surgery.resize import resize\n"
            "import resprout.methods\n"
            "print(sorted(m for m in sys.modules if m.startswith('resprout')))\n")
    out = subprocess.run([PYTHON, "-c", code], env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = eval(out.stdout)
    for heavy in ("resprout.engine.trainer", "resprout.run", "resprout.data", "resprout.models",
                  "resprout.methods.metric", "resprout.engine.store"):
        assert heavy not in loaded, heavy
