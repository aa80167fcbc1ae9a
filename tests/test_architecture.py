"""ARCHITECTURE.md's example method (examples/confidence_penalty.py) runs, and does what it says: its loss term is
the hand-computed ``CE - beta * H(p)`` of the step's outputs, the rate is the run's cosine with the base scaled in
the last epoch, and it logs the number of steps it trained per generation."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from resprout.engine.method import Method
from resprout.run import train
from tests.conftest import synthetic

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "confidence_penalty.py"


def load_example():
    """The example file as a module (registered, as a dataclass module must be while it is being defined)."""
    spec = importlib.util.spec_from_file_location("resprout_example_confidence_penalty", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Probe(Method):
    """After the example in the method order: its term against a hand computation, and the rate of every step."""

    name = "test_architecture_probe"
    log: dict = {}

    def on_loss(self, ctx):
        logits, targets = ctx.outputs["model"].detach().double(), ctx.targets_of("model").tolist()
        ce = ent = 0.0
        for row, y in zip(logits.tolist(), targets):
            z = math.log(sum(math.exp(v) for v in row))
            ce += z - row[y]
            ent -= sum(math.exp(v - z) * (v - z) for v in row)
        expected = (ce - 0.3 * ent) / len(targets)
        got = [float(v.detach()) for m, name, v in ctx.terms if (m, name) == ("model", "confidence")]
        Probe.log["terms"].append((got, expected))

    def on_after_step(self, ctx):
        Probe.log["rates"].append((ctx.epoch, ctx.step, ctx.members["model"].optimizer.param_groups[0]["lr"]))


def test_the_example_method_is_short_and_uses_only_the_context():
    text = EXAMPLE.read_text()
    assert len(text.splitlines()) < 60
    assert "trainer" not in text and "._" not in text  # no trainer, no private attribute
    assert "examples/confidence_penalty.py" in (ROOT / "ARCHITECTURE.md").read_text()


def test_the_example_method_computes_what_it_says():
    example = load_example()
    Probe.log = {"terms": [], "rates": []}
    keys = synthetic(method="confidence+test_architecture_probe", epochs=2,
                     **{"confidence.beta": 0.3, "confidence.last_lr": 0.5})
    result = train(**keys, methods=[example.ConfidencePenalty, Probe], save=False)
    steps = 8  # synthetic(): 256 images, batch 32
    assert len(Probe.log["terms"]) == 2 * steps
    for got, expected in Probe.log["terms"]:
        assert got == [pytest.approx(expected, rel=1e-5)]
    expected_rates = [(e, s, 0.05 * (0.5 if e == 1 else 1.0) * 0.5 * (1 + math.cos(math.pi * (e + s / steps) / 2)))
                      for e in range(2) for s in range(steps)]
    assert [(e, s) for e, s, _ in Probe.log["rates"]] == [(e, s) for e, s, _ in expected_rates]
    assert [r for _, _, r in Probe.log["rates"]] == pytest.approx([r for _, _, r in expected_rates], rel=1e-12)
    assert result["generations"][0]["model"]["confidence_steps"] == 2 * steps
