"""Dashboard logs, the epoch line and the default evaluation cadence.

The references: the results store's own rows (metrics.csv and the TensorBoard events are read back and must hold
exactly them), an uninterrupted run (a crash and resume must give the same files), and the cadence formula
``ceil(evaluated images / training images per epoch)`` applied by hand.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest

import resprout
from resprout.cli import _summary, main as cli_main
from resprout.engine.rundir import read_run_file
from resprout.engine.store import Store
from resprout.engine.trainer import Trainer
from resprout.errors import ConfigError

# KE on a narrow CNN, 300 digits training images (10 steps of 32 = 320 images per epoch) against 359 test images:
# the default cadence is every ceil(359 / 320) = 2 epochs, and the last epoch of each generation
KEYS = dict(data="digits", model="cnn", width=0.5, per_class=30, method="ke", generations=2, epochs=3,
            batch_size=32, seed=1, threads=1, progress="none", checkpoint_minutes=0)
TIMING = {"seconds", "images_per_second"}


def store_rows(run_dir: Path) -> list[tuple]:
    """(step, generation, epoch, member, split, metric, value) of the store, generation and epoch from 1, the
    dashboard logs' layout: epoch rows, and generation rows (split "generation", no epoch) at their last epoch."""
    info = read_run_file(run_dir)
    epochs = info["config"]["epochs"]
    with Store(info["store"]) as s:
        rows = [(g * epochs + e + 1, g + 1, e + 1, m, split, k, v)
                for m, g, e, split, k, v in s.epoch_metrics(info["run_id"])]
        rows += [((g + 1) * epochs, g + 1, None, m, "generation", k, v)
                 for m, g, k, v in s.generation_metrics(info["run_id"])]
    return rows


def csv_rows(run_dir: Path) -> list[tuple]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["step", "generation", "epoch", "member", "split", "metric", "value"]
        return [(int(s), int(g), int(e) if e else None, m, split, k, float(v)) for s, g, e, m, split, k, v in reader]


def without_timing(rows):
    return [r for r in rows if r[5] not in TIMING]


@pytest.fixture(scope="module")
def ke_run(tmp_path_factory):
    """One KE run with both built-in loggers and a user logger object, shared by the read-back tests."""
    tmp = tmp_path_factory.mktemp("ke")
    user = ListLogger()
    logs = "csv,tensorboard" if _has_tensorboard() else "csv"
    result = resprout.train(**KEYS, out=tmp / "run", store=tmp / "store.db", loggers=[*logs.split(","), user])
    return tmp / "run", result, user


class ListLogger:
    """A user's logger: keeps every call."""

    def __init__(self) -> None:
        self.hparams: list[dict] = []
        self.metrics: list[tuple[int, str, dict]] = []
        self.closed = 0

    def log_hparams(self, config):
        self.hparams.append(config)

    def log_metrics(self, step, member, metrics):
        self.metrics.append((step, member, dict(metrics)))

    def close(self):
        self.closed += 1


def _has_tensorboard() -> bool:
    try:
        from tensorboard.backend.event_processing import event_accumulator  # noqa: F401
    except ImportError:
        return False
    return True


# -- metrics.csv and the user's logger ------------------------------------------------------------------------------------
def test_metrics_csv_holds_exactly_the_store_rows(ke_run):
    run, _, _ = ke_run
    rows = csv_rows(run)
    assert sorted(rows, key=repr) == sorted(store_rows(run), key=repr)  # every value, bit for bit (repr round trip)
    splits = {(r[4], r[5]) for r in rows}
    # per-epoch train, lr and test; per-generation dense and slim accuracy (KE) and per-layer magnitudes
    assert {("train", "loss"), ("train", "lr"), ("test", "top1"), ("generation", "test_top1"),
            ("generation", "slim_top1"), ("generation", "slim_bnfix_top1")} <= splits
    assert any(k.startswith("fit_abs/") for _, k in splits)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)  # appended in training order


def test_default_cadence_evaluates_every_ceil_test_over_train_epochs_and_each_generations_last(ke_run):
    run, _, _ = ke_run
    every = math.ceil(359 / (10 * 32))  # 2
    evaluated = sorted({(g, e) for _, g, e, _, split, _, _ in store_rows(run) if split == "test"})
    expected = [(g, e) for g in (1, 2) for e in (1, 2, 3) if e % every == 0 or e == 3]
    assert evaluated == expected == [(1, 2), (1, 3), (2, 2), (2, 3)]


def test_explicit_eval_every_is_kept(tmp_path):
    run = tmp_path / "run"
    resprout.train(**{**KEYS, "method": "ce", "generations": 1, "eval_every": 1}, out=run)
    assert sorted({e for _, _, e, _, split, _, _ in store_rows(run) if split == "test"}) == [1, 2, 3]


def test_user_logger_receives_the_store_rows_the_config_and_one_close(ke_run):
    run, _, user = ke_run
    got = [(step, member, key, value) for step, member, metrics in user.metrics for key, value in metrics.items()]
    want = [(s, m, f"{split}/{k}", v) for s, _, _, m, split, k, v in store_rows(run)]
    assert sorted(got, key=repr) == sorted(want, key=repr)
    assert len(user.hparams) == 1 and user.closed == 1
    hp = user.hparams[0]
    assert hp["epochs"] == 3 and hp["method"] == "ke" and hp["method_options.ke.split_rate"] == 0.5


def test_tensorboard_events_hold_the_store_rows_the_lr_and_the_config_as_hparams(ke_run):
    if not _has_tensorboard():
        pytest.skip("tensorboard is not installed (pip install 'resprout[tensorboard]')")
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import plugin_data_pb2

    run, _, _ = ke_run
    acc = ea.EventAccumulator(str(run / "tensorboard"), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    want: dict[str, list] = {}
    for s, _, _, m, split, k, v in store_rows(run):
        want.setdefault(f"{m}/{split}/{k}", []).append((s, v))
    assert set(acc.Tags()["scalars"]) == set(want)
    assert "model/train/lr" in want
    for tag, points in want.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [s for s, _ in sorted(points)]
        assert [e.value for e in events] == pytest.approx([v for _, v in sorted(points)], rel=1e-6, abs=1e-7)
    info = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert info.hparams["epochs"].number_value == 3
    assert info.hparams["method"].string_value == "ke"
    assert info.hparams["method_options.ke.split_rate"].number_value == 0.5


# -- resume ---------------------------------------------------------------------------------------------------------------
class Crash(Exception):
    pass


def test_crash_and_resume_give_the_same_csv_as_an_uninterrupted_run(tmp_path, monkeypatch, ke_run):
    """Crash in generation 2, epoch 2: rows of generation 2, epoch 1 are in the files but not in the last checkpoint
    (checkpoint_every=2 writes none after that epoch), so the resume must drop and rewrite them."""
    reference, _, _ = ke_run
    keys = {**KEYS, "checkpoint_every": 2}
    ref_rows = without_timing(csv_rows(reference))
    steps = 10
    calls = {"n": 0}
    original = Trainer.train_step

    def crashing(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 4 * steps + 3:  # generation 2, epoch 2, step 3
            raise Crash()
        return original(self, *a, **kw)

    run = tmp_path / "run"
    logs = ["csv", "tensorboard"] if _has_tensorboard() else ["csv"]
    monkeypatch.setattr(Trainer, "train_step", crashing)
    with pytest.raises(Crash):
        resprout.train(**keys, out=run, loggers=logs)
    before = csv_rows(run)
    assert max(r[0] for r in before) == 4  # generation 2, epoch 1 was logged, and is past the last checkpoint
    monkeypatch.setattr(Trainer, "train_step", original)
    resprout.resume(run)
    assert without_timing(csv_rows(run)) == ref_rows  # same rows, same order, no duplicates
    assert sorted(csv_rows(run), key=repr) == sorted(store_rows(run), key=repr)
    if _has_tensorboard():
        from tensorboard.backend.event_processing import event_accumulator as ea

        acc = ea.EventAccumulator(str(run / "tensorboard"), size_guidance={ea.SCALARS: 0})
        acc.Reload()
        assert [e.step for e in acc.Scalars("model/train/loss")] == [1, 2, 3, 4, 5, 6]  # purged, not doubled
        loss = [v for s, _, _, m, split, k, v in store_rows(run) if (split, k) == ("train", "loss")]
        assert [e.value for e in acc.Scalars("model/train/loss")] == pytest.approx(loss, rel=1e-6)


# -- choosing loggers -------------------------------------------------------------------------------------------------------
def test_loggers_none_writes_no_csv_and_bad_names_are_one_line(tmp_path):
    run = tmp_path / "run"
    resprout.train(**{**KEYS, "method": "ce", "generations": 1, "epochs": 1}, out=run, loggers="none")
    assert run.is_dir() and not (run / "metrics.csv").exists()
    with pytest.raises(ConfigError, match=r"bad value for loggers: wandb \(allowed: .*csv, tensorboard"):
        resprout.train(**KEYS, out=tmp_path / "bad", loggers="csv,wandb")
    assert not (tmp_path / "bad").exists()


def test_a_logger_object_without_the_protocol_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="lacks log_hparams, close"):
        resprout.train(**KEYS, out=tmp_path / "run", loggers=[type("Half", (), {"log_metrics": print})()])
    assert not (tmp_path / "run").exists()


def test_missing_tensorboard_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'resprout\[tensorboard\]'"):
        resprout.train(**KEYS, out=tmp_path / "run", loggers="csv,tensorboard")
    assert not (tmp_path / "run").exists()


def test_an_unsaved_run_feeds_the_users_logger_only(tmp_path):
    user = ListLogger()
    resprout.train(**{**KEYS, "method": "ce", "generations": 1, "epochs": 2}, save=False, loggers=[user])
    # epoch 1 is not evaluated (every 2 epochs), epoch 2 is, then the generation's rows at its last epoch
    assert [(s, "test/top1" in m, "generation/test_top1" in m) for s, _, m in user.metrics] == \
        [(1, False, False), (2, True, False), (2, False, True)]
    assert not list(tmp_path.rglob("metrics.csv"))


# -- the epoch line, the generation line, the summary, the report ----------------------------------------------------------
def test_epoch_line_shows_train_and_eval_time_threads_and_what_was_evaluated(ke_run):
    run, result, _ = ke_run
    lines = (run / "train.log").read_text().splitlines()
    epochs = [ln for ln in lines if " ep " in ln]
    assert len(epochs) == 6
    assert "| train " in epochs[0] and "not evaluated (every 2 epochs and the last) | 1 thread" in epochs[0]
    assert "eval " in epochs[1] and "s (test 359 images) | 1 thread" in epochs[1]
    # after each generation a line with its top-1 metrics, KE's slim network included
    done = [ln for ln in lines if " done " in ln]
    gen2 = result["generations"][1]["model"]
    assert done[1] == (f"gen 2/2 done  model: slim_bnfix_top1 {100 * gen2['slim_bnfix_top1']:.2f}  "
                       f"slim_top1 {100 * gen2['slim_top1']:.2f}  test_top1 {100 * gen2['test_top1']:.2f}")


def test_final_summary_of_a_ke_run_shows_the_slim_network(ke_run):
    _, result, _ = ke_run
    gen2 = result["generations"][-1]["model"]
    summary = _summary(result)
    assert (f"model: slim network (generation 2) test top1 {100 * gen2['slim_top1']:.2f} (BN copied), "
            f"{100 * gen2['slim_bnfix_top1']:.2f} (BN re-estimated)") in summary


def test_report_on_a_run_without_a_finished_epoch_says_so_in_one_line(tmp_path, capsys, ke_run):
    from resprout.config import make_config
    from resprout.run import create_trainer

    empty = tmp_path / "empty"
    create_trainer(make_config(**{**KEYS, "method": "ce", "generations": 1}), run_dir=empty, run_id="noepoch",
                   store_path=tmp_path / "store.db")  # registered, never trained
    assert cli_main(["report", str(empty), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no finished epoch yet" in err and str(empty) in err
    assert not (tmp_path / "rep").exists()
    run, _, _ = ke_run  # with a run that has epochs, the empty one is named and left out
    assert cli_main(["report", str(empty), str(run), "--out", str(tmp_path / "rep2")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"no finished epoch yet in {empty} (running): not in the report"
