"""Dense-Sparse-Dense (Han et al., ICLR 2017): exact per-layer sparsity, masks that hold through momentum and weight
decay, the re-dense phase from zero at the lower learning rate, phases, refusals, resume."""

from __future__ import annotations

import pytest
import torch

from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.dsd import DenseSparseDense, dsd_phases, magnitude_masks
from resprout.models import build_model
from resprout.run import resume, train
from tests.conftest import synthetic
from tests.test_trainer import CRASH, Crash, assert_same_weights, metric_rows, weights


def _dsd(trainer) -> DenseSparseDense:
    return next(m for m in trainer.methods if m.name == "dsd")


class DSDProbe(Method):
    """Listed before dsd: snapshots the weights at every epoch start (before dsd prunes) and checks, after every
    step, what the sparse and re-dense phases promise."""

    name = "test_dsd_probe"
    log: dict = {}

    def on_fit_start(self, trainer):
        DSDProbe.log = {"starts": {}, "sparse_steps": 0, "zero_violations": 0, "redense": []}

    def on_epoch_start(self, trainer):
        model = trainer.members["model"].model
        DSDProbe.log["starts"][(trainer.generation, trainer.epoch)] = {
            n: p.detach().clone() for n, p in model.named_parameters()}

    def on_after_step(self, trainer):  # runs before dsd's own after_step: the optimizer's raw result
        dsd = _dsd(trainer)
        model = trainer.members["model"].model
        params = dict(model.named_parameters())
        phase = dsd.phase(trainer)
        if phase == "sparse":
            DSDProbe.log["sparse_steps"] += 1
            DSDProbe.log["zero_violations"] += sum(int((params[n][~m] != 0).sum()) for n, m in dsd.masks.items())
        if phase == "redense" and trainer.step == 0 and not DSDProbe.log["redense"]:
            DSDProbe.log["redense"].append({
                "lr": [g["lr"] for g in trainer.members["model"].optimizer.param_groups],
                "weights": {n: p.detach().clone() for n, p in params.items()}})



def test_magnitude_masks_prune_exactly_the_smallest_weights_of_every_layer():
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, num_classes=10)
    masks = magnitude_masks(model, 0.3)
    weights_2d = {n: p for n, p in model.named_parameters() if p.ndim >= 2}
    assert set(masks) == set(weights_2d)  # conv and linear weights; BN and biases are never pruned
    for name, p in weights_2d.items():
        pruned, kept = p.abs()[~masks[name]], p.abs()[masks[name]]
        assert len(pruned) == round(0.3 * p.numel())  # exact per layer, not a global threshold
        assert pruned.max() <= kept.min()  # the smallest magnitudes of that layer
        # the paper's threshold: the k-th smallest |W| of the layer
        threshold = p.abs().flatten().kthvalue(len(pruned)).values
        assert torch.equal(~masks[name], p.abs() <= threshold)


def test_phases_split_the_run_in_thirds_and_refuse_what_cannot_be_split():
    assert dsd_phases(9) == (3, 3, 3) and dsd_phases(10) == (3, 3, 4) and dsd_phases(6, 4, 1) == (4, 1, 1)
    with pytest.raises(ConfigError, match="at least one epoch per phase"):
        dsd_phases(2)
    with pytest.raises(ConfigError, match="dsd.phases=generations needs generations=3"):
        train(**synthetic(method="dsd", generations=2, method_options={"dsd": {"phases": "generations"}}), save=False)
    with pytest.raises(ConfigError, match="dsd.phases=epochs runs its three phases in one generation"):
        train(**synthetic(method="dsd", generations=2, epochs=3), save=False)
    with pytest.raises(ConfigError, match="dsd.sparsity"):
        train(**synthetic(method="dsd", epochs=3, method_options={"dsd": {"sparsity": 1.0}}), save=False)


@pytest.mark.parametrize("phases", ["epochs", "generations"])
def test_sparse_phase_holds_pruned_weights_at_zero_and_redense_restarts_them_from_zero(phases):
    by_gen = phases == "generations"
    keys = synthetic(method="test_dsd_probe+dsd", epochs=1 if by_gen else 3, generations=3 if by_gen else 1,
                     momentum=0.9, weight_decay=5e-3, schedule="constant", lr=0.05,
                     method_options={"dsd": {"phases": phases, "sparsity": 0.4, "redense_lr": 0.1}})
    train(**keys, methods=[DSDProbe], save=False)
    log = DSDProbe.log
    sparse_start = (1, 0) if by_gen else (0, 1)
    redense_start = (2, 0) if by_gen else (0, 2)
    # the masks are the 40% smallest weights of every layer at the end of the dense phase
    before = log["starts"][sparse_start]
    expected = {n: w.abs() <= w.abs().flatten().kthvalue(round(0.4 * w.numel())).values
                for n, w in before.items() if w.ndim >= 2}
    at_redense = log["starts"][redense_start]
    for n, pruned in expected.items():
        assert torch.all(at_redense[n][pruned] == 0)  # zero through the whole sparse phase
        assert torch.all(at_redense[n][~pruned] != 0)
    # the optimizer's raw step (momentum 0.9, weight decay) never moved a pruned weight: gradients and momentum
    # are masked too, not only the weights afterwards
    assert log["sparse_steps"] == 8 and log["zero_violations"] == 0
    first = log["redense"][0]
    assert first["lr"] == [pytest.approx(0.005)] * len(first["lr"])  # 1/10 of the rate, constant schedule
    moved = sum(int((first["weights"][n][pruned] != 0).sum()) for n, pruned in expected.items())
    assert moved > 0  # from zero, the pruned weights train again


def test_dsd_resumes_mid_sparse_phase_exactly(tmp_path):
    keys = synthetic(method="dsd+test_crash", epochs=3, momentum=0.9)
    train(**keys, methods=[Crash], out=tmp_path / "full")
    CRASH["at"] = (0, 1, 3)  # inside the sparse phase
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(**keys, methods=[Crash], out=tmp_path / "crashed")
    resume(tmp_path / "crashed", methods=[Crash], progress="none")
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "crashed"))
    assert metric_rows(tmp_path / "full") == metric_rows(tmp_path / "crashed")
