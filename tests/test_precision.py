"""Precision, memory layout and compilation (resprout.engine.precision, issue #17).

What ``auto`` resolves to on each kind of machine (torch's capability checks monkeypatched), the refusals (one line,
exit 2, nothing created), the resolved value kept by a run and its resume, bf16 training against a hand-written
autocast loop (bit for bit), fp32 weights, optimizer state and checkpoints, fp16's gradient scaler (on CPU, put in
by hand: fp16 runs on CUDA only), and every method under bf16: Knowledge Evolution's masks, re-initialization, slim
network and BN re-estimation; feature taps and KTAN's regressor and discriminator; Neural Rejuvenation's monitor and
rebuild; grafting's entropy; the slim export (always fp32).

bf16 runs here are tiny (8x8 synthetic images, a half-width CNN): on a CPU without native bf16 torch emulates it,
many times slower than fp32 (the suite allows it with RESPROUT_ALLOW_EMULATED_BF16, see tests/conftest.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import resprout.run
from resprout.analysis.slim import export_slim, load_slim
from resprout.cli import main
from resprout.config import config_from_dict, make_config
from resprout.engine import precision
from resprout.engine.checkpoint import load_file
from resprout.engine.evaluation import evaluate
from resprout.engine.method import Method
from resprout.engine.optim import OPTIM_KEYS, build_optimizer, set_lr
from resprout.engine.precision import (EMULATED_ENV, PORTABLE_ENV, resolve_channels_last, resolve_precision)
from resprout.errors import ConfigError, Interrupted, TrainingDiverged
from resprout.methods import METHODS, register_method
from resprout.methods.evolution.hypotheses import fit_hypothesis, reestimate_batchnorm
from resprout.methods.grafting.criteria import layer_entropy, layer_l1
from resprout.models import build_model
from resprout.run import create_trainer, open_run, resume, train
from benchmarks.gpu import METHOD_KEYS, method_keys
from tests.conftest import synthetic

BF16 = torch.bfloat16


def bf16_autocast():
    return torch.autocast("cpu", dtype=BF16)


def machine(monkeypatch, *, avx512_bf16: bool = False, amx: bool = False, cuda_bf16: bool = False) -> None:
    """Pretend to be a machine of the given kind: torch's own capability checks answer as told, and neither of
    the suite's variables applies."""
    monkeypatch.delenv(PORTABLE_ENV, raising=False)
    monkeypatch.delenv(EMULATED_ENV, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda_bf16)


def float_tensors(obj):
    """Every floating-point tensor inside nested dicts and lists."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in float_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in float_tensors(v)]
    return []


class MetricsLog:
    """A user logger keeping every metrics row."""

    def __init__(self):
        self.rows = []

    def log_hparams(self, config):
        pass

    def log_metrics(self, step, member, metrics):
        self.rows.append((step, member, dict(metrics)))

    def close(self):
        pass


# -- what auto resolves to --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, "fp32"), (True, False, "bf16"),
                                                         (False, True, "bf16"), (True, True, "bf16")])
def test_auto_is_bf16_only_on_a_cpu_that_computes_it_natively(monkeypatch, avx512_bf16, amx, expected):
    machine(monkeypatch, avx512_bf16=avx512_bf16, amx=amx)
    assert resolve_precision("auto", "cpu") == expected
    keys = synthetic(device="cpu")
    cfg, _ = resprout.run.resolve(make_config(**keys))  # what a run stores
    assert cfg.precision == expected and cfg.channels_last is True
    # an unresolved config is the run it resolves to (a rerun of `train --out DIR` or of a comparison)
    resolved = make_config(**keys, precision=expected, channels_last=True)
    assert make_config(**keys).fingerprint() == resolved.fingerprint()
    if expected == "fp32":  # bf16 asked for on a CPU that emulates it: refused, naming the way to allow it
        with pytest.raises(ConfigError, match=f"precision=bf16 but this CPU .* set {EMULATED_ENV}=1"):
            resolve_precision("bf16", "cpu")
        monkeypatch.setenv(EMULATED_ENV, "1")
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="precision=fp16 runs on CUDA only"):
        resolve_precision("fp16", "cpu")
    monkeypatch.setenv(PORTABLE_ENV, "1")  # the suite's setting: fp32 and NCHW whatever the machine
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resprout.run.resolve(make_config(**keys))[0].channels_last is False


@pytest.mark.parametrize("cuda_bf16", [False, True])
def test_auto_on_cuda_follows_torchs_bf16_check_and_fp16_is_allowed_there(monkeypatch, cuda_bf16):
    machine(monkeypatch, cuda_bf16=cuda_bf16)
    cuda = torch.device("cuda", 0)
    assert resolve_precision("auto", cuda) == ("bf16" if cuda_bf16 else "fp32")
    assert resolve_precision("fp16", cuda) == "fp16"
    if not cuda_bf16:
        with pytest.raises(ConfigError, match=f"device cuda:0 only emulates bf16.*{EMULATED_ENV}"):
            resolve_precision("bf16", cuda)


def test_channels_last_auto_is_on_for_built_in_and_zoo_models_and_off_for_your_own_module(monkeypatch):
    machine(monkeypatch)
    assert resolve_channels_last("auto", "cnn") and resolve_channels_last("auto", "tv:resnet18")
    assert resolve_channels_last("auto", "timm:resnet18")
    assert not resolve_channels_last("auto", "custom:TinyNet")  # it may flatten a feature map with .view
    assert resolve_channels_last(True, "custom:TinyNet") and not resolve_channels_last(False, "cnn")
    trainer = create_trainer(make_config(**synthetic(epochs=1)), run_dir=None, run_id=None, store_path=None)
    assert trainer.config.channels_last is True and trainer.channels_last
    conv = trainer.members["model"].model.conv2.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x, _ = trainer.train_loader.batch(0, 0, 0)  # (one channel: both layouts have the same strides)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_a_config_saved_before_the_keys_existed_means_fp32_and_keeps_its_fingerprint():
    cfg = make_config(**synthetic(precision="fp32", channels_last=False))
    saved = {k: v for k, v in cfg.to_dict().items()
             if k not in ("precision", "compile", "data_mode", "memory_budget", "data_workers")}
    old = config_from_dict(saved)
    assert old.precision == "fp32" and old.compile is False
    # the fingerprint as it was computed before: the keys but device, threads, progress and loggers, without the
    # empty member_options and teacher
    ident = {k: v for k, v in saved.items() if k not in ("device", "threads", "progress", "loggers")}
    del ident["member_options"], ident["teacher"]
    before = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert old.fingerprint() == cfg.fingerprint() == before
    assert make_config(**synthetic(precision="bf16", channels_last=False)).fingerprint() != before
    assert make_config(**synthetic(precision="fp32", channels_last=False, compile=True)).fingerprint() == before


# -- refusals ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, says", [
    (["precision=bf16"], f"only emulates bf16, many times slower than fp32; use precision=auto or fp32, or set "
                         f"{EMULATED_ENV}=1"),
    (["precision=fp16"], "precision=fp16 runs on CUDA only"),
    (["compile=true"], "compile=true but torch cannot compile here: no C++ compiler"),
    (["precision=half"], "bad value for precision: 'half' (allowed: auto, fp32, bf16, fp16)"),
    (["channels_last=sometimes"], "bad value for channels_last: 'sometimes' (allowed: auto, true, false)"),
])
def test_what_the_machine_cannot_run_is_one_line_exit_2_and_nothing_is_created(monkeypatch, capsys, tmp_path, args,
                                                                                  says):
    machine(monkeypatch)  # a CPU without native bf16
    monkeypatch.setattr(precision, "_compile_problem", lambda kind: "no C++ compiler found (install g++)")
    before = set(tmp_path.iterdir())
    assert main(["train", "data=digits", "model=cnn", "epochs=1", *args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and "Traceback" not in err
    assert set(tmp_path.iterdir()) == before  # no run directory, no store


class StopAfter(Method):
    """Asks the trainer to stop (as Ctrl-C would) after global step ``at``, once."""

    name = "test_precision_stop"
    at: int | None = None

    def on_batch_end(self, trainer):
        step = trainer.epoch * trainer.train_loader.steps(0, 0) + trainer.step + 1
        if StopAfter.at is not None and step == StopAfter.at:
            StopAfter.at = None
            trainer.request_stop(2)


register_method(StopAfter)


def test_a_run_resumes_in_the_precision_it_began_with_and_a_change_is_refused(monkeypatch, tmp_path):
    run = tmp_path / "run"
    machine(monkeypatch, avx512_bf16=True)  # started on a machine with native bf16: auto is bf16
    StopAfter.at = 10
    with pytest.raises(Interrupted):
        train(**synthetic(method="test_precision_stop", device="cpu"), out=run)
    assert load_file(run / "checkpoint.pt")["config"]["precision"] == "bf16"
    files = {p: p.read_bytes() for p in (run / "run.json", run / "checkpoint.pt")}
    with pytest.raises(ConfigError, match="resume cannot change precision"):
        resume(run, precision="fp32")
    machine(monkeypatch)  # resumed on a machine that only emulates bf16: refused, nothing changed
    with pytest.raises(ConfigError, match=f"precision=bf16 but this CPU .*{EMULATED_ENV}=1"):
        resume(run)
    assert {p: p.read_bytes() for p in files} == files
    monkeypatch.setenv(EMULATED_ENV, "1")  # allowed: it trains on in bf16, as it began (auto is fp32 here)
    resume(run, progress="none")
    lines = (run / "train.log").read_text().splitlines()
    epochs = [line for line in lines if line.startswith("gen 1/1 ep")]
    assert len(epochs) == 2 and all(line.endswith("| 1 thread, bf16 channels-last") for line in epochs)


# -- bf16 training ----------------------------------------------------------------------------------------------------
def test_bf16_training_equals_a_hand_autocast_loop_and_weights_optimizer_and_checkpoints_stay_fp32(tmp_path):
    run = tmp_path / "run"
    cfg = make_config(**synthetic(epochs=1, precision="bf16", augment="none"))
    trainer = create_trainer(cfg, run_dir=run, run_id="bf16", store_path=tmp_path / "store.db")
    model = copy.deepcopy(trainer.members["model"].model)
    result = trainer.fit()

    loader, spec = trainer.train_loader, trainer.optim_spec(trainer.members["model"])
    steps = loader.steps(0, 0)
    opt = build_optimizer(model, {k: spec[k] for k in OPTIM_KEYS})
    model.train()
    for s in range(steps):
        x, y = loader.batch(0, 0, s)
        with bf16_autocast():  # the forward and the loss; backward outside
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        assert logits.dtype == BF16 and loss.dtype == torch.float32
        opt.zero_grad(set_to_none=True)
        loss.backward()
        set_lr(opt, trainer.schedule.factor(s / steps, 1 / steps))
        opt.step()
    got = trainer.members["model"].model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(got[k], v), k
    with bf16_autocast():  # evaluation under the run's autocast too
        assert result["final"]["model"] == evaluate(model, trainer.eval_loaders["test"])

    state = load_file(run / "checkpoint.pt")
    kept = float_tensors(state["members"]) + float_tensors(torch.load(run / "best-model.pt", weights_only=True))
    assert kept and all(t.dtype == torch.float32 for t in kept)  # weights and BN statistics
    momentum = float_tensors(trainer.members["model"].optimizer.state_dict()["state"])
    assert momentum and all(t.dtype == torch.float32 for t in momentum)
    line = (run / "train.log").read_text().splitlines()[0]
    assert line.endswith("| 1 thread, bf16")  # the epoch line says how the run computes


LOW = (torch.bfloat16, torch.float16)


def test_every_method_trains_under_bf16_and_keeps_its_state_in_full_precision(method_run):
    name, result, trainer = method_run
    # weights and buffers as the method keeps them: fp32 (AdaCos keeps its scale in fp64), never bf16
    states = float_tensors({n: m.model.state_dict() for n, m in trainer.members.items()})
    assert states and all(t.dtype not in LOW and torch.isfinite(t).all() for t in states), name
    assert all(p.dtype == torch.float32 for m in trainer.members.values() for p in m.model.parameters()), name
    optim = float_tensors({n: m.optimizer.state_dict()["state"] for n, m in trainer.members.items() if m.optimizer})
    assert all(t.dtype == torch.float32 for t in optim), name
    assert all(math.isfinite(v) for m in result["final"].values() for v in m.values()), name


# the methods resprout ships (the registry also holds this module's test methods)
_BUILTIN = [n for n in METHODS.names() if METHODS.get(n).__module__.startswith("resprout.methods.")]


def test_the_method_list_covers_every_method():
    assert set(METHOD_KEYS) == set(_BUILTIN)


@pytest.fixture(params=sorted(METHOD_KEYS))
def method_run(request):
    """One short bf16 run of a method: the run the GPU check makes of it (benchmarks/gpu.py), on this CPU."""
    name = request.param
    keys = method_keys(name, "bf16")
    teachers = []
    if "teacher" in keys:
        torch.manual_seed(11)
        teachers = [build_model("cnn", in_channels=1, num_classes=4, width=1.0)]
    trainer = create_trainer(make_config(**keys), run_dir=None, run_id=None, store_path=None, teachers=teachers)
    assert trainer.precision == "bf16"
    return name, trainer.fit(), trainer


# -- fp16's gradient scaler (CUDA only; here a CPU scaler put in by hand) ---------------------------------------------
class NanGradient(Method):
    """At step ``at`` of the first epoch adds a term whose value is 0 and whose gradient is NaN (the derivative of
    sqrt at 0), and records the parameters before and after that step."""

    name = "test_nan_gradient"
    at = 3
    seen: dict = {}

    def on_batch_start(self, trainer):
        if trainer.epoch == 0 and trainer.step == self.at:
            NanGradient.seen["before"] = copy.deepcopy(dict(trainer.members["model"].model.named_parameters()))

    def on_loss(self, trainer):
        if trainer.epoch == 0 and trainer.step == self.at:
            w = trainer.members["model"].model.fc.weight
            trainer.add_loss("model", "nan_gradient", torch.sqrt(((w - w.detach()) ** 2).sum()))

    def on_batch_end(self, trainer):
        if trainer.epoch == 0 and trainer.step == self.at:
            NanGradient.seen["after"] = copy.deepcopy(dict(trainer.members["model"].model.named_parameters()))
            NanGradient.seen["scale"] = trainer.scaler.get_scale() if trainer.scaler is not None else None


register_method(NanGradient)


def scaled_trainer(tmp_path=None, **keys):
    cfg = make_config(**synthetic(method="test_nan_gradient", epochs=2, **keys))
    log = MetricsLog()
    trainer = create_trainer(cfg, run_dir=tmp_path, run_id="scaled" if tmp_path else None,
                             store_path=tmp_path / "store.db" if tmp_path else None, loggers=[log])
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=4)
    return trainer, log


def test_a_step_the_gradient_scaler_skips_is_counted_and_is_not_divergence():
    trainer, log = scaled_trainer()
    trainer.fit()  # no TrainingDiverged
    seen = NanGradient.seen
    for k, p in seen["before"].items():
        assert torch.equal(seen["after"][k], p), k  # the overflowing step was skipped whole
    assert seen["scale"] == 512.0  # and the scale halved (growth every 4 good steps would have doubled it)
    skipped = [m["train/skipped_steps"] for _, member, m in log.rows if "train/skipped_steps" in m]
    assert skipped == [1.0, 0.0]  # epoch 1 skipped one step, epoch 2 none
    assert all(torch.isfinite(p).all() for p in trainer.members["model"].model.parameters())
    # without the scaler the same NaN gradient reaches the weights and the run diverges
    plain = create_trainer(make_config(**synthetic(method="test_nan_gradient", epochs=2)), run_dir=None,
                           run_id=None, store_path=None)
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        plain.fit()


def test_the_scale_is_in_the_checkpoint_and_a_resumed_trainer_continues_with_it(tmp_path):
    trainer, _ = scaled_trainer(tmp_path / "run")
    trainer.fit()
    state = load_file(tmp_path / "run" / "checkpoint.pt")
    assert state["scaler"]["scale"] == trainer.scaler.get_scale() != 1024.0
    again, _ = scaled_trainer()
    again.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert again.scaler.state_dict() == trainer.scaler.state_dict()


# -- the methods under bf16 -------------------------------------------------------------------------------------------
class Snapshot(Method):
    """Copies of the member ``model`` at every generation's end and (after the methods before it) start."""

    name = "test_precision_snapshot"
    ends: list = []
    starts: list = []

    def on_generation_start(self, trainer):
        Snapshot.starts.append(copy.deepcopy(trainer.members["model"].model))

    def on_generation_end(self, trainer):
        Snapshot.ends.append(copy.deepcopy(trainer.members["model"].model))


register_method(Snapshot)


def test_ke_under_bf16_masks_reinitialization_slim_network_and_bn_reestimation():
    Snapshot.ends, Snapshot.starts = [], []
    keys = synthetic(method="ke+test_precision_snapshot", generations=2, epochs=1, precision="bf16")
    trainer = create_trainer(make_config(**keys), run_dir=None, run_id=None, store_path=None)
    result = trainer.fit()
    ke = trainer.methods[1]
    assert all(m.dtype == torch.bool for m in ke.masks.values())
    # Eq. 1 in fp32: the fit hypothesis carried over exactly, the reset hypothesis redrawn
    end1 = dict(Snapshot.ends[0].named_parameters())
    for name, p in Snapshot.starts[1].named_parameters():
        assert p.dtype == torch.float32
        if name in ke.masks:
            mask = ke.masks[name]
            assert torch.equal(p[mask], end1[name][mask]) and not torch.equal(p[~mask], end1[name][~mask])
    # the slim network of each generation: copied BN, then BN re-estimated by fp32 forwards; evaluated under bf16
    test = trainer.eval_loaders["test"]
    for g, dense in enumerate(Snapshot.ends):
        slim = fit_hypothesis(dense, trainer.input_shape, 0.5)
        with bf16_autocast():
            copied = evaluate(slim, test)
        batches = [trainer.train_loader.batch(g, 0, s)[0] for s in range(min(20, trainer.train_loader.steps(g, 0)))]
        reestimate_batchnorm(slim, batches)
        assert all(b.dtype == torch.float32 for b in slim.buffers() if b.is_floating_point())
        with bf16_autocast():
            fixed = evaluate(slim, test)
        logged = result["generations"][g]["model"]
        assert logged["slim_top1"] == copied["top1"] and logged["slim_loss"] == pytest.approx(copied["loss"])
        assert logged["slim_bnfix_top1"] == fixed["top1"]
        assert logged["slim_bnfix_loss"] == pytest.approx(fixed["loss"])


class Taps(Method):
    """After KTAN's terms: the dtype of the tapped maps and KTAN's terms of every update step."""

    name = "test_precision_taps"
    seen: list = []

    def on_loss(self, trainer):
        step = trainer.update_step.name
        ms = trainer.taps.output("model", "relu3")
        rt = trainer.scratch.get("ktan_rt")
        terms = {name: value for member, name, value in trainer.terms if trainer.updates(member)}  # this step's
        Taps.seen.append((step, ms.dtype, None if rt is None else rt.dtype, ms.detach().float(),
                          None if rt is None else rt.float(),
                          {k: (v.dtype, float(v.detach())) for k, v in terms.items()}))


register_method(Taps)


def test_ktan_under_bf16_taps_regressor_and_discriminator():
    torch.manual_seed(11)
    teacher = build_model("cnn", in_channels=1, num_classes=4, width=1.0)
    Taps.seen = []
    keys = synthetic(method="ktan+test_precision_taps", teacher=["module:T"], epochs=1, precision="bf16",
                     method_options={"ktan": {"regressor_epochs": 0.5, "mse_epochs": 0.5}})
    trainer = create_trainer(make_config(**keys), run_dir=None, run_id=None, store_path=None, teachers=[teacher])
    regressor0 = copy.deepcopy(trainer.members["regressor"].model)
    disc0 = copy.deepcopy(trainer.members["discriminator"].model)
    trainer.fit()
    # Algorithm 1 trained the regressor (under the run's autocast), in fp32
    for (k, v), v0 in zip(trainer.members["regressor"].model.state_dict().items(), regressor0.state_dict().values()):
        assert v.dtype == torch.float32 and not torch.equal(v, v0), k
    # the discriminator learned in the adversarial half, in fp32
    for v, v0 in zip(trainer.members["discriminator"].model.parameters(), disc0.parameters()):
        assert v.dtype == torch.float32 and not torch.equal(v, v0)
    steps = [s[0] for s in Taps.seen]
    assert steps[:4] == ["student"] * 4 and steps[4:] == ["discriminator", "student"] * 4
    for step, ms_dtype, rt_dtype, ms, rt, terms in Taps.seen:
        assert ms_dtype == BF16 and rt_dtype == BF16  # the taps hold what the bf16 forward computed
        assert all(dtype == torch.float32 and math.isfinite(v) for dtype, v in terms.values())
        if step == "student":  # Eq. (2), by hand in fp64 from the tapped maps: equal within bf16 rounding
            mse = ((ms.double() - rt.double()) ** 2).mean().item()
            assert terms["mse"][1] == pytest.approx(0.5 * mse, rel=1e-2, abs=1e-4)
            assert set(terms) in ({"ce", "mse"}, {"ce", "mse", "adv"})
        else:
            assert set(terms) == {"disc"}
    assert sum("adv" in s[5] for s in Taps.seen) == 4  # the adversarial half


def test_nr_monitor_and_rebuild_under_bf16():
    from tests.test_rejuvenation import NR_FAST, Capture, Kill, close

    Capture.seen = []
    res = train(**synthetic(method="test_nr_kill+nr", epochs=2, precision="bf16",
                            method_options={"nr": {**NR_FAST, "scheme": "cr", "rejuvenations": 2}}),
                methods=[Kill, Capture], save=False)
    rep = res["rejuvenation"]
    assert rep["count"] == 2 == len(Capture.seen)
    for before, after, rec in Capture.seen:  # the rebuild keeps the function (eval, fp32) and meets its cost
        assert close(after, before)
        assert rec["utilization_before"] < 0.9 and abs(rec["after_vs_target"] - 1) <= 0.01
        assert rec["cost_after_counted"] == rec["cost_after"]
    assert [round(rec["epoch"] * 8) for rec in rep["rejuvenations"]] == [4, 13]  # the checks right after the kills


def test_graft_entropy_is_computed_in_fp32_under_autocast_and_of_low_precision_tensors():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, generator=g)
    low = w.to(BF16)
    # the official binning by hand, in float64, on the widened values (half-open bins over [min, max))
    assert layer_entropy(low) == pytest.approx(_entropy(low.float()), abs=1e-9)
    assert layer_entropy(low) == layer_entropy(low.float()) and layer_l1(low) == layer_l1(low.float())
    outside = layer_entropy(w)
    with bf16_autocast():
        assert layer_entropy(w) == outside and layer_entropy(low) == layer_entropy(low.float())


class GraftSnap(Method):
    """The peers' weights at the end of the first epoch (before the graft) and at the start of the second (after)."""

    name = "test_precision_graft"
    seen: dict = {}

    def _copy(self, trainer):
        return {n: {k: v.detach().clone() for k, v in trainer.members[n].model.named_parameters()}
                for n in ("peer_1", "peer_2")}

    def on_epoch_end(self, trainer):
        if trainer.epoch == 0:
            GraftSnap.seen["before"] = self._copy(trainer)

    def on_epoch_start(self, trainer):
        if trainer.epoch == 1:
            GraftSnap.seen["after"] = self._copy(trainer)


register_method(GraftSnap)


def test_grafting_under_bf16_weighs_fp32_entropies_by_eq_7_and_mixes_fp32_weights():
    GraftSnap.seen = {}
    train(**synthetic(method="graft+test_precision_graft", epochs=2, precision="bf16"), save=False)
    before, after = GraftSnap.seen["before"], GraftSnap.seen["after"]
    for me, prev in (("peer_1", "peer_2"), ("peer_2", "peer_1")):
        for k in ("conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"):
            w_me, w_prev = before[me][k], before[prev][k]
            assert w_me.dtype == torch.float32 == after[me][k].dtype
            # Eq. 6 by hand (float64 histogram of the fp32 weights), Eq. 7 with the official 1/pi (A = 0.4,
            # c = 500, rounded to 0.01)
            h_me, h_prev = (_entropy(w) for w in (w_me, w_prev))
            alpha = round(0.5 + 0.4 / math.pi * math.atan(500 * (h_me - h_prev)), 2)
            assert torch.allclose(after[me][k], alpha * w_me + (1 - alpha) * w_prev, atol=1e-6), (me, k, alpha)


def _entropy(w: torch.Tensor, bins: int = 10) -> float:
    """Eq. 6 as the official loop computes it: half-open bins whose edges ``min + (i + 1) * step`` are computed in
    the weight's own dtype (fp32, so a rounded last edge may still hold the maximum), probabilities over all
    values, the sum in float64."""
    x = w.reshape(-1)
    lo, step = x.min(), (x.max() - x.min()) / bins
    counts = np.array([int(((x >= lo + i * step) & (x < lo + (i + 1) * step)).sum()) for i in range(bins)])
    p = counts[counts > 0] / x.numel()
    return float(-(p * np.log(p)).sum())


def test_slim_export_of_a_bf16_run_is_fp32(tmp_path):
    run = tmp_path / "run"
    train(**synthetic(method="ke", generations=2, epochs=1, precision="bf16"), out=run)
    trainer = open_run(run)
    meta = export_slim(trainer, tmp_path / "slim.pt2", source=run)
    net, saved = load_slim(tmp_path / "slim.pt2")
    assert saved == meta
    assert all(t.dtype == torch.float32 for t in list(net.state_dict().values()) if t.is_floating_point())
    # by hand: the checkpoint's weights, their fit hypothesis, BN re-estimated on the first batches of the position
    # the finished run is at (generation 2 done: generation index 2)
    state = load_file(run / "checkpoint.pt")["members"]["model"]["model"]
    dense = build_model("cnn", in_channels=1, num_classes=4, width=0.5)
    dense.load_state_dict(state)
    slim = fit_hypothesis(dense, trainer.input_shape, 0.5)
    loader = trainer.train_loader
    g = trainer.generation
    reestimate_batchnorm(slim, [loader.batch(g, 0, s)[0] for s in range(min(20, loader.steps(g, 0)))])
    slim.eval()
    images = trainer.dataset.test.images[:32].float() / 255
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        want = slim((images - mean) / std)
        got = net(images)
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-5)
    assert meta["test_top1"] == evaluate(slim, trainer.eval_loaders["test"])["top1"]  # fp32, as the file


# -- compile -----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_training_equals_eager_within_bf16_tolerance():
    problem = precision.compile_problem("cpu")
    if problem is not None:  # the refusal is what runs here (tested above)
        pytest.skip(f"torch cannot compile on this machine: {problem}")
    keys = synthetic(epochs=1, precision="bf16", augment="none")
    runs = {}
    for compiled in (False, True):
        trainer = create_trainer(make_config(**keys, compile=compiled), run_dir=None, run_id=None, store_path=None)
        if compiled:
            assert type(trainer.members["model"].forward_module).__name__ == "OptimizedModule"
        runs[compiled] = (trainer.fit(), trainer.members["model"].model.state_dict())
    (eager, w_eager), (comp, w_comp) = runs[False], runs[True]
    for k, v in w_eager.items():
        if v.is_floating_point():
            assert torch.allclose(w_comp[k], v, rtol=1e-2, atol=1e-2), k
    assert comp["final"]["model"]["top1"] == pytest.approx(eager["final"]["model"]["top1"], abs=0.05)


# -- the GPU check, without a GPU --------------------------------------------------------------------------------------
def test_the_gpu_check_without_cuda_exits_0_listing_every_method_precision_speed_and_ddp(monkeypatch, capsys,
                                                                                          tmp_path):
    from benchmarks import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out", str(tmp_path / "gpu.md")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("no CUDA device here: nothing was run")
    listed = set(line.strip() for line in out[1:])
    for name in _BUILTIN:
        for p in ("fp32", "bf16", "fp16"):
            assert f"method={name} one short epoch in {p}" in listed
    for p in ("fp32", "bf16", "fp16"):
        assert f"resnet20 32x32x3 batch 128 channels-last: trainer vs hand loop, images/s in {p}" in listed
    assert "torchrun DDP over 1 GPU(s) in bf16" in listed
    assert len(listed) == 3 * len(_BUILTIN) + 4 and not (tmp_path / "gpu.md").exists()


def test_the_gpu_check_table_has_one_row_per_check():
    from benchmarks.gpu import Check, table

    checks = [Check("method", "ke", "fp16", "ok", {"seconds": "1.2", "test top1": "50.0"}),
              Check("speed", "resnet20", "bf16", "below the 0.95 target", {"trainer / hand": "0.91"}),
              Check("ddp", "torchrun DDP over 2 GPU(s)", "bf16", "FAILED (exit 1): boom")]
    lines = table(checks, "GPU check").splitlines()
    assert lines[:4] == ["GPU check", "", "| check | precision | result | numbers |", "|---|---|---|---|"]
    assert lines[4:] == [
        "| method=ke one short epoch | fp16 | ok | seconds 1.2, test top1 50.0 |",
        "| resnet20: trainer vs hand loop, images/s | bf16 | below the 0.95 target | trainer / hand 0.91 |",
        "| torchrun DDP over 2 GPU(s) | bf16 | FAILED (exit 1): boom |  |"]
