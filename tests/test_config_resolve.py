"""The configuration resolved once (issue #20): option scopes on the Config fields, one build and one resolve per
run, a frozen result that resolving again leaves as it is."""

from __future__ import annotations

import dataclasses

import pytest

import resprout
import resprout.config
import resprout.run
from resprout.config import Config, make_config
from resprout.errors import ConfigError
from tests.conftest import synthetic


def test_the_key_lists_are_read_from_the_scopes_on_the_fields():
    # the lists as they were written out by hand before the scopes existed (config.py, run.py, engine/optim.py)
    assert set(resprout.config.RUNTIME_KEYS) == {"device", "threads", "progress", "loggers", "compile", "data_mode",
                                                 "memory_budget", "data_workers"}
    assert set(resprout.config.RESUME_KEYS) == {"lr", "momentum", "weight_decay", "optimizer", "schedule",
                                                "warmup_epochs", "gamma", "nesterov", "betas"}
    assert resprout.config.AUTO_KEYS == ("precision", "channels_last")
    from resprout.engine.optim import MEMBER_KEYS, OPTIM_KEYS, SCHEDULE_KEYS

    assert set(OPTIM_KEYS) == {"optimizer", "lr", "momentum", "nesterov", "weight_decay", "betas", "decay_bn_bias"}
    assert SCHEDULE_KEYS == ("schedule", "warmup_epochs", "milestones", "gamma")
    assert MEMBER_KEYS == OPTIM_KEYS + SCHEDULE_KEYS
    # a runtime key stays out of the identity, a resumable or auto key is in it
    base = make_config(precision="fp32", channels_last=False)
    assert make_config(precision="fp32", channels_last=False, compile=True, threads=3).fingerprint() == \
        base.fingerprint()
    assert make_config(precision="fp32", channels_last=True).fingerprint() != base.fingerprint()
    assert make_config(precision="fp32", channels_last=False, lr=0.2).fingerprint() != base.fingerprint()


def test_an_unknown_scope_is_refused_at_definition():
    with pytest.raises(ValueError, match="unknown option scope 'runtim'"):
        resprout.config.option(1, "x", scope="runtim")


def test_the_config_is_frozen():
    cfg = make_config(epochs=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 4  # type: ignore[misc]


def _count_builds(monkeypatch) -> list:
    calls = []
    real = resprout.config.make_config

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    for mod in (resprout.config, resprout.run):
        monkeypatch.setattr(mod, "make_config", counting)
    return calls


def test_a_run_builds_its_config_once_and_resolves_it_once(monkeypatch):
    calls = _count_builds(monkeypatch)
    result = resprout.train(**synthetic(epochs=1, method="ls"), save=False)
    assert len(calls) == 2  # the keys, then the resolved config (method options filled in): nothing more
    assert result["final"]["model"]["top1"] >= 0
    calls.clear()
    cfg = resprout.load_config(None, ["method=ls"] + [f"{k}={v}" for k, v in synthetic(epochs=1).items()
                                                      if k != "data_options"])
    assert len(calls) == 1
    resolved, _ = resprout.run.resolve(cfg)
    assert len(calls) == 2 and resolved.method_options == {"ls": {"smoothing": 0.1}}


def test_resolving_a_resolved_config_changes_nothing(monkeypatch):
    resolved, methods = resprout.run.resolve(make_config(**synthetic(method="ke+ls")))
    assert resolved.precision != "auto" and resolved.channels_last != "auto"
    assert set(resolved.method_options) == {"ke", "ls"}
    calls = _count_builds(monkeypatch)
    again, _ = resprout.run.resolve(resolved)
    assert again is resolved and calls == []


def test_a_config_built_by_hand_is_validated_before_a_run_uses_it():
    with pytest.raises(ConfigError, match="bad value for epochs: 0"):
        resprout.train(Config(**{**synthetic(), "epochs": 0}), save=False)
    bad = dataclasses.replace(make_config(**synthetic()), lr=-1.0)
    with pytest.raises(ConfigError, match="bad value for lr: -1.0"):
        resprout.train(bad, save=False)


def test_resume_and_open_run_read_the_stored_config_without_resolving_it_again(tmp_path, monkeypatch):
    out = tmp_path / "run"
    resprout.train(**synthetic(epochs=1, method="ls"), out=out, store=tmp_path / "s.db")
    calls = _count_builds(monkeypatch)
    resprout.resume(out)  # finished: the checkpoint is checked and the run ends at once
    # the config with the runtime keys given, the stored one, the one the checkpoint was written with; the stored
    # config is resolved already, so the trainer resolves nothing
    assert len(calls) == 3
    calls.clear()
    trainer = resprout.open_run(out)
    assert len(calls) == 1 and trainer.config.method_options == {"ls": {"smoothing": 0.1}}
