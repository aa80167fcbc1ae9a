"""The trainer's contract: events, members, generations, surgery, exact resume, refusals, divergence."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resprout.config import make_config, option
from resprout.engine.checkpoint import load_file
from resprout.engine.events import Event
from resprout.engine.method import Method
from resprout.engine.store import Store
from resprout.errors import CheckpointError, TrainingDiverged
from resprout.run import create_trainer, resume, train
from resprout.surgery.registry import register_surgery
from tests.conftest import synthetic


# -- methods used only by these tests (passed to train as objects: resprout.train(methods=[Recorder])) -------------
class Recorder(Method):
    name = "test_recorder"
    log: list = []

    def _rec(self, trainer, event):
        Recorder.log.append((event, trainer.generation, trainer.epoch, trainer.step))


for _e in Event:
    if _e is not Event.LOSS:
        setattr(Recorder, _e.handler, (lambda ev: lambda self, t: self._rec(t, ev))(_e.value))


class Peers(Method):
    """Adds a second trainable classifier and a frozen one."""

    name = "test_peers"

    def setup(self, trainer):
        base = trainer.members["model"].model
        import copy

        trainer.add_member("peer", copy.deepcopy(base))
        trainer.add_member("frozen", copy.deepcopy(base), trainable=False, evaluate=False)

    def on_loss(self, trainer):
        frozen = trainer.output_of("frozen")
        assert not frozen.requires_grad
        Peers.frozen_shape = tuple(frozen.shape)


CRASH = {"at": None}


class Crash(Method):
    """Raises at a chosen (generation, epoch, step) while armed: an in-process stand-in for a crash."""

    name = "test_crash"

    def on_batch_end(self, trainer):
        if CRASH["at"] == (trainer.generation, trainer.epoch, trainer.step):
            CRASH["at"] = None
            raise RuntimeError("simulated crash")


@register_surgery("test_grow_head")
def grow_head(model: nn.Module, classes: int) -> nn.Module:
    """Shape-changing surgery for tests: an extra classes x classes linear layer after the model."""
    return nn.Sequential(model, nn.Linear(classes, classes))


class Grow(Method):
    name = "test_grow"

    def on_generation_start(self, trainer):
        if trainer.generation == 1:
            trainer.apply_surgery("model", "test_grow_head", classes=4)


@dataclass
class NanOptions:
    at_epoch: int = option(1, "epoch at which the loss becomes NaN")


class MakeNan(Method):
    name = "test_nan"
    Options = NanOptions

    def on_loss(self, trainer):
        if trainer.epoch == self.options.at_epoch:
            trainer.add_loss("model", "nan", torch.tensor(float("nan")))


def weights(run_dir: Path) -> dict:
    return load_file(run_dir / "checkpoint.pt")["members"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for member in a:
        sa, sb = a[member]["model"], b[member]["model"]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{member}.{k} differs"


def metric_rows(run_dir: Path) -> list:
    from resprout.engine.rundir import read_run_file

    info = read_run_file(run_dir)
    with Store(info["store"]) as s:
        return [r for r in s.epoch_metrics(info["run_id"]) if r[4] not in ("seconds", "images_per_second")]


# -- tests ---------------------------------------------------------------------------------------------------------------
def test_events_fire_in_the_documented_order():
    Recorder.log = []
    train(**synthetic(generations=2), methods=[Recorder], save=False)
    events = [e for e, *_ in Recorder.log]
    steps = 8  # 256 images / batch 32
    batch = ["batch_start", "after_backward", "after_step", "batch_end"] * steps
    epoch = ["epoch_start"] + batch + ["epoch_end", "after_evaluate"]
    generation = ["generation_start"] + epoch * 2 + ["generation_end"]
    assert events == ["fit_start"] + generation * 2 + ["fit_end"]
    # the position seen by handlers: generation_start of the second generation sees generation 1, epoch 0
    starts = [(g, e) for ev, g, e, _ in Recorder.log if ev == "generation_start"]
    assert starts == [(0, 0), (1, 0)]


def test_every_generation_gets_a_fresh_optimizer_and_schedule():
    cfg = make_config(**synthetic(generations=3, epochs=1))
    trainer = create_trainer(cfg, run_dir=None, run_id=None, store_path=None)
    seen = []

    class Spy(Method):
        name = "spy"

        def on_epoch_start(self, t):
            opt = t.members["model"].optimizer
            seen.append((id(opt), len(opt.state)))

        def on_after_step(self, t):
            if t.step == 0:
                seen.append(t.members["model"].optimizer.param_groups[0]["lr"])

    trainer.methods.append(Spy())
    from resprout.engine.method import handlers

    trainer._handlers = {e: handlers(trainer.methods, e) for e in Event}
    trainer.fit()
    ids = [s[0] for s in seen if isinstance(s, tuple)]
    assert len(set(ids)) == 3  # a new optimizer object per generation
    assert all(s[1] == 0 for s in seen if isinstance(s, tuple))  # with empty momentum buffers
    lrs = [s for s in seen if isinstance(s, float)]
    assert lrs[0] == lrs[1] == lrs[2] == pytest.approx(0.05)  # the schedule restarts at its peak


def test_start_steps_and_train_step_take_exactly_the_steps_of_fit():
    """The speed benchmarks time ``train_step`` after ``start_steps``: the same steps as ``fit`` on the same batches
    give the same weights, bit for bit (one epoch of 8 steps, momentum SGD under the cosine schedule)."""
    cfg = make_config(**synthetic(epochs=1))
    fitted = create_trainer(cfg, run_dir=None, run_id=None, store_path=None)
    fitted.fit()
    stepped = create_trainer(cfg, run_dir=None, run_id=None, store_path=None)
    stepped.start_steps()
    loader = stepped.train_loader
    n = loader.steps(0, 0)
    for s in range(n):
        stepped.step = s
        x, y = loader.batch(0, 0, s)
        stepped.train_step(x, y, s / n, 1 / n)
    a, b = fitted.members["model"].model.state_dict(), stepped.members["model"].model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert stepped.members["model"].model.training  # start_steps put the trainable member in training mode


def test_several_members_each_train_with_their_own_optimizer():
    result = train(**synthetic(epochs=4), methods=[Peers], save=False)
    assert set(result["final"]) == {"model", "peer"}  # the frozen member is not evaluated
    assert Peers.frozen_shape == (32, 4)
    # the peer starts as a copy and sees the same batches: one backward over both losses trains each alone
    assert result["final"]["model"] == result["final"]["peer"]
    assert result["final"]["model"]["top1"] > 0.4


def test_crash_and_resume_give_exactly_the_weights_and_metrics_of_an_uninterrupted_run(tmp_path):
    keys = synthetic(method="test_crash+test_grow", generations=2, epochs=2)
    full = train(**keys, methods=[Crash, Grow], out=tmp_path / "full")
    CRASH["at"] = (1, 1, 2)  # generation 2, epoch 2, after its second step: after the surgery
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(**keys, methods=[Crash, Grow], out=tmp_path / "crashed")
    resumed = resume(tmp_path / "crashed", methods=[Crash, Grow], progress="none")
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "crashed"))
    assert metric_rows(tmp_path / "full") == metric_rows(tmp_path / "crashed")
    assert resumed["final"] == full["final"] and resumed["generations"] == full["generations"]
    ck = load_file(tmp_path / "crashed" / "checkpoint.pt")
    assert [r["op"] for r in ck["surgery"]] == ["test_grow_head"]
    assert isinstance(torch.load(tmp_path / "crashed" / "best-model.pt", weights_only=True)["model"], dict)


def test_a_finished_run_directory_returns_its_results_without_training(tmp_path):
    first = train(**synthetic(), out=tmp_path / "run")
    mtime = (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns
    again = train(**synthetic(), out=tmp_path / "run")
    assert again["final"] == first["final"]
    assert (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns == mtime


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match="loss is nan at generation 1 epoch 2 step 1"):
        train(**synthetic(epochs=3), methods=[MakeNan], out=tmp_path / "run")
    state = load_file(tmp_path / "run" / "checkpoint.pt")
    assert state["position"]["epoch"] == 1 and state["position"]["step"] == 0
    assert all(torch.isfinite(v).all() for v in state["members"]["model"]["model"].values() if v.is_floating_point())
    with Store() as s:
        assert s.runs()[0].status == "diverged"


def test_a_directory_of_another_configuration_is_refused_and_left_untouched(tmp_path):
    train(**synthetic(), out=tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with pytest.raises(CheckpointError, match="another configuration .*epochs: 2 vs 3"):
        train(**synthetic(epochs=3), out=tmp_path / "run")
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert before == after


def test_a_non_empty_foreign_directory_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a resprout run directory"):
        train(**synthetic(), out=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("damage", ["truncate", "foreign", "garbage"])
def test_corrupted_or_foreign_checkpoints_are_refused(tmp_path, damage):
    train(**synthetic(epochs=3), out=tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    else:
        path.write_bytes(b"not a checkpoint at all")
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="checkpoint"):
        resume(tmp_path / "run", progress="none")
    assert path.read_bytes() == before


def test_a_checkpoint_with_a_pickled_object_is_refused_without_running_it(tmp_path):
    train(**synthetic(), out=tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    state = load_file(path)
    state["payload"] = Path("/")  # any non-tensor object: the weights-only loader must refuse it
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="not a resprout checkpoint"):
        resume(tmp_path / "run", progress="none")


def test_label_smoothing_equals_torch_and_soft_targets():
    from resprout.methods import smooth_cross_entropy, smooth_labels

    logits = torch.randn(16, 7)
    y = torch.randint(0, 7, (16,))
    for eps in (0.0, 0.1, 0.5):
        ours = smooth_cross_entropy(logits, y, eps)
        assert torch.allclose(ours, F.cross_entropy(logits, y, label_smoothing=eps), atol=1e-6)
        soft = smooth_labels(y, 7, eps)
        assert torch.allclose(soft.sum(1), torch.ones(16))
        assert torch.allclose(-(soft * logits.log_softmax(1)).sum(1).mean(), ours, atol=1e-6)


def test_schedules():
    from resprout.engine.optim import Schedule

    cos = Schedule("cosine", epochs=10)
    assert cos.factor(0) == 1.0 and cos.factor(5) == pytest.approx(0.5) and cos.factor(10) == pytest.approx(0)
    step = Schedule("step", epochs=10, milestones=(5, 8), gamma=0.1)
    assert [step.factor(t) for t in (0, 4.9, 5, 8)] == pytest.approx([1, 1, 0.1, 0.01])
    warm = Schedule("cosine", epochs=10, warmup=2)
    assert warm.factor(0, 0.5) == pytest.approx(0.25) and warm.factor(1.5, 0.5) == 1.0
    assert warm.factor(2) == 1.0 and warm.factor(6) == pytest.approx(0.5)


def test_unknown_method_options_and_conflicts_are_config_errors():
    from resprout.errors import ConfigError

    for keys, msg in [(dict(method="nope"), "unknown method 'nope'"),
                      (dict(method="ce", method_options={"ls": {"smoothing": 0.2}}), "method 'ls' is not used"),
                      (dict(method="ls", method_options={"ls": {"smooth": 0.2}}), "unknown option ls.smooth"),
                      (dict(method="ls", method_options={"ls": {"smoothing": 2}}), "ls.smoothing"),
                      (dict(method="ce+ls"), "both provide the task loss")]:
        with pytest.raises(ConfigError, match=msg):
            train(**synthetic(**keys), save=False)


@pytest.mark.parametrize("keys", [dict(optimizer="adam", lr=0.003), dict(nesterov=True, schedule="step", warmup_epochs=1),
                                  dict(schedule="constant", decay_bn_bias=False, channels_last=True)])
def test_optimizers_and_schedules_train(keys):
    cfg = make_config(**synthetic(epochs=3, **keys))
    trainer = create_trainer(cfg, run_dir=None, run_id=None, store_path=None)
    before = {k: v.clone() for k, v in trainer.members["model"].model.state_dict().items()}
    result = trainer.fit()
    after = trainer.members["model"].model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert result["final"]["model"]["top1"] > 0.4  # 4 classes: chance is 0.25
    opt = trainer.members["model"].optimizer
    assert type(opt).__name__ == ("Adam" if keys.get("optimizer") == "adam" else "SGD")
    if keys.get("decay_bn_bias") is False:
        assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]


def test_best_is_selected_on_validation_when_there_is_one(tmp_path):
    result = train(**synthetic(val_split=0.25, epochs=3), out=tmp_path / "run")
    best = result["best"]["model"]
    assert best["selected_on"] == "val" and "test_top1" in best
    splits = {r[3] for r in metric_rows(tmp_path / "run")}
    assert splits == {"train", "val", "test"}


def test_the_progress_bar_shows_eta_and_metrics():
    import io

    from resprout.engine.progress import BarProgress, PlainProgress, make_progress

    stream = io.StringIO()
    bar = BarProgress(stream)
    cfg = make_config(**synthetic(epochs=2))
    trainer = create_trainer(cfg, run_dir=None, run_id=None, store_path=None, progress=bar)
    trainer.fit()
    text = stream.getvalue()
    assert "eta" in text and "gen 1/1 ep 2/2" in text and "test loss" in text
    assert isinstance(make_progress("auto", io.StringIO()), PlainProgress)  # not a terminal: plain lines


def test_train_metrics_and_per_member_optimizer_overrides(tmp_path):
    class Tuned(Method):
        name = "test_tuned"

        def setup(self, trainer):
            import copy

            trainer.add_member("adam_peer", copy.deepcopy(trainer.members["model"].model),
                               optim={"optimizer": "adam", "lr": 0.002})

    cfg = make_config(**synthetic(method="test_tuned", epochs=1))
    trainer = create_trainer(cfg, run_dir=tmp_path / "run", run_id="r", store_path=tmp_path / "s.db",
                             methods=[Tuned])
    trainer.fit()
    opts = {n: m.optimizer for n, m in trainer.members.items()}
    assert type(opts["model"]).__name__ == "SGD" and opts["model"].param_groups[0]["initial_lr"] == 0.05
    assert type(opts["adam_peer"]).__name__ == "Adam" and opts["adam_peer"].param_groups[0]["initial_lr"] == 0.002
    with Store(tmp_path / "s.db") as s:
        train_rows = {(r[0], r[4]) for r in s.epoch_metrics("r") if r[3] == "train"}
    for member in ("model", "adam_peer"):
        assert {(member, "loss"), (member, "top1"), (member, "lr")} <= train_rows


class LrSpy(Method):
    """Records the rate of each epoch's last step, then puts another rate in the optimizer at the epoch's end, as
    a surgery's fresh optimizer does (slimming's pruning, a rejuvenation)."""

    name = "test_lr_spy"
    last: list = []

    def on_after_step(self, t):
        if len(LrSpy.last) == t.epoch:
            LrSpy.last.append(None)
        LrSpy.last[t.epoch] = t.members["model"].optimizer.param_groups[0]["lr"]

    def on_epoch_end(self, t):
        t.members["model"].optimizer.param_groups[0]["lr"] = 123.0


def test_the_logged_rate_is_the_last_steps_even_when_the_epochs_end_changes_the_optimizer(tmp_path):
    LrSpy.last = []
    result = train(**synthetic(method="ce+test_lr_spy", epochs=3), methods=[LrSpy], out=tmp_path / "run")
    logged = [r[-1] for r in metric_rows(Path(result["run_dir"])) if r[4] == "lr"]
    assert len(LrSpy.last) == 3 and 123.0 not in LrSpy.last
    assert logged == LrSpy.last
    lines = (Path(result["run_dir"]) / "train.log").read_text().splitlines()
    assert [float(line.split("  lr ")[1].split()[0]) for line in lines if "  lr " in line] == pytest.approx(
        LrSpy.last, rel=1e-3)  # the progress line prints 4 digits
