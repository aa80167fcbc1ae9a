"""Method harness: the task-loss and distillation methods on their own, and metric learning in the trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resprout.engine.method import Method
from resprout.methods import kd_loss
from resprout.run import train
from tests.conftest import synthetic


def test_kd_loss_is_the_temperature_scaled_kl_divergence():
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    T = 4.0
    p_t = F.softmax(t / T, dim=1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / T, dim=1))).sum() / 8 * T * T
    assert torch.allclose(kd_loss(s, t, T), manual, atol=1e-6)
    assert kd_loss(t, t, T).abs() < 1e-6
    s.requires_grad_(True)
    t.requires_grad_(True)
    kd_loss(s, t, T).backward()
    assert t.grad is None  # the target side never receives gradient


class PairSpy(Method):
    name = "test_pair_spy"
    seen: list = []

    def on_loss(self, trainer):
        PairSpy.seen.append((len(trainer.targets), trainer.outputs["model"].shape[0]))


def test_cskd_trains_on_anchors_with_same_class_partners():
    PairSpy.seen = []
    result = train(**synthetic(method="cskd+test_pair_spy", epochs=3, batch_size=16), methods=[PairSpy],
                   save=False)
    # the class-pair sampler gives 16 anchors + 16 partners; the members see the 16 anchors
    assert PairSpy.seen and all(seen == (16, 16) for seen in PairSpy.seen)
    assert result["final"]["model"]["top1"] > 0.4


def test_triplet_metric_learning_reports_retrieval():
    result = train(data="digits", model="cnn", method="triplet", epochs=2, batch_size=50, lr=0.05, eval_every=2,
                   progress="none", save=False)
    final = result["final"]["model"]
    assert final["top1"] == final["recall@1"] > 0.8
    assert final["recall@8"] >= final["recall@4"] >= final["recall@2"] >= final["recall@1"]
    assert 0.3 < final["nmi"] <= 1


def test_triplet_batches_are_p_classes_by_k():
    from resprout.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of k=5"):
        train(**synthetic(method="triplet", batch_size=32), save=False)


def test_a_triplet_run_rebuilds_with_its_embedding_head(tmp_path):
    """The embedding head is setup surgery in the weights file: the network rebuilt from it embeds like the trainer's
    own network read back by ``open_run``."""
    from resprout.engine.rundir import SavedRun
    from resprout.run import open_run

    run_dir = train(**synthetic(method="triplet", batch_size=20, epochs=1, eval_every=100),
                    out=tmp_path / "run")["run_dir"]
    saved = SavedRun.open(run_dir)
    assert [(r["op"], r["args"]) for r in saved.weights()[1]] == [
        ("embedding_head", {"dim": 128, "input_shape": [1, 8, 8]})]
    rebuilt = saved.model(in_channels=1, num_classes=4)
    trained = open_run(run_dir).members["model"].model
    x = torch.randn(5, 1, 8, 8)
    out = rebuilt.eval()(x)
    assert out.shape == (5, 128)
    torch.testing.assert_close(out, trained.eval()(x))
