"""A simulated crash for the kill-and-resume tests that run in this process (the ones that start a command use
``RESPROUT_FAULT`` instead)."""

from __future__ import annotations


class SimulatedCrash(RuntimeError):
    pass


def crash_once_at(monkeypatch, cls, epoch: int, step: int, hook: str = "on_batch_start") -> None:
    """Make ``cls.<hook>`` raise :class:`SimulatedCrash` ("simulated crash") the first time the trainer is at
    ``(epoch, step)``; remove it with ``monkeypatch.delattr(cls, hook)`` before resuming."""
    calls = {"n": 0}

    def crash(self, trainer):
        if (trainer.epoch, trainer.step) == (epoch, step) and calls["n"] == 0:
            calls["n"] += 1
            raise SimulatedCrash("simulated crash")

    monkeypatch.setattr(cls, hook, crash, raising=False)
