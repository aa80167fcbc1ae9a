"""The filter analyses (invalid ratio, baseline-classified l1 means, information, plots) against hand values, and
the `resprout analyze` command."""

from __future__ import annotations

import json
import math

import pytest
import torch

from resprout.analysis.filters import analyze, by_baseline, information, invalid_ratio
from resprout.cli import main
from resprout.methods.grafting import layer_entropy
from resprout.run import train
from tests.conftest import synthetic


def net(norms: list[float], fc: float = 1.0) -> dict[str, torch.Tensor]:
    """A state dict with one conv layer whose filters (2x1x1 each... 2 values) have the given l1 norms."""
    conv = torch.tensor([[[[n / 2]], [[n / 2]]] for n in norms])  # (C, 2, 1, 1): l1 = n
    return {"conv.weight": conv, "bn.weight": torch.ones(len(norms)), "fc.weight": torch.full((3, len(norms)), fc),
            "bn.num_batches_tracked": torch.tensor(5)}


def test_invalid_ratio_and_information_against_hand_values():
    s = net([0.0005, 0.005, 0.05, 0.5, 5.0])
    assert invalid_ratio(s) == pytest.approx({1e-3: 0.2, 1e-2: 0.4, 1e-1: 0.6, 1.0: 0.8})
    assert information(s) == pytest.approx(layer_entropy(s["conv.weight"]) + layer_entropy(s["fc.weight"]))
    assert information(s) > 0 and layer_entropy(s["fc.weight"]) == 0.0  # a constant layer holds nothing


def test_filters_are_classified_by_the_baseline_and_measured_on_each_network():
    base = net([0.01, 2.0, 0.02, 4.0])
    other = net([1.0, 3.0, 5.0, 7.0])
    t = by_baseline(base, {"base": base, "other": other}, 0.1)
    assert (t["valid"], t["invalid"]) == (2, 2)
    assert t["networks"]["base"] == pytest.approx({"valid_l1": 3.0, "invalid_l1": 0.015})
    assert t["networks"]["other"] == pytest.approx({"valid_l1": 5.0, "invalid_l1": 3.0})  # filters 1,3 / 0,2


def test_analyze_command_on_a_graft_run_with_a_baseline(tmp_path, capsys):
    train(**synthetic(method="graft", epochs=1, seed=1), out=tmp_path / "g")
    train(**synthetic(method="ce", epochs=1, seed=1), out=tmp_path / "b")
    assert main(["analyze", str(tmp_path / "g"), f"baseline={tmp_path / 'b'}", "--out", str(tmp_path / "a"),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["networks"]) == {"baseline:model", "peer_1", "peer_2"}
    assert [t["threshold"] for t in out["by_baseline"]] == [0.1, 1.0]
    for name in ("filters.md", "invalid_ratio.png", "information.png", "filter_norms.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    text, result = analyze(tmp_path / "g")
    assert "| peer_1 |" in text and "Ensemble of the peers" in text
    assert result["networks"]["peer_1"]["filters"] == 16 + 32 + 32  # the cnn at width 0.5
    assert not math.isnan(result["networks"]["peer_2"]["information"])


def test_analyze_refuses_with_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for args in (["analyze", str(tmp_path / "missing")], ["analyze", str(tmp_path / "empty")],
                 ["analyze", str(tmp_path / "empty"), "base=x"]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("resprout: error: analyze") and "\n" not in err, err
