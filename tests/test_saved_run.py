"""SavedRun (issue #20): the one reader of a run directory, compared with the files read back by hand and with the
trainer that open_run rebuilds."""

from __future__ import annotations

import json

import pytest
import torch

import resprout
from resprout.engine.checkpoint import WEIGHTS_FORMAT, load_file
from resprout.engine.rundir import SavedRun, is_own_file
from resprout.errors import CheckpointError, ConfigError
from tests import engine_methods as em
from tests.conftest import synthetic


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """A run whose model was widened by surgery in its second epoch (so its shapes are not the config's)."""
    out = tmp_path_factory.mktemp("saved") / "run"
    resprout.train(**synthetic(method="test_grow_mid_epoch", epochs=2, seed=3), methods=[em.GrowMidEpoch],
                   out=out, store=out.parent / "s.db")
    return out


def test_run_json_and_config_are_the_files_read_back(grown):
    saved = SavedRun.open(grown)
    info = json.loads((grown / "run.json").read_text())
    assert saved.info == info and saved.run_id == info["run_id"] and str(saved.store) == info["store"]
    assert saved.config.to_dict() == info["config"] and saved.config.fingerprint() == info["fingerprint"]
    assert saved.checkpoint()["run_id"] == info["run_id"]


def test_the_last_and_the_best_model_have_their_surgery_replayed(grown):
    saved = SavedRun.open(grown)
    last = load_file(grown / "checkpoint.pt")
    assert [r["op"] for r in last["surgery"]], "the fixture's run must hold a surgery"
    model = saved.model(in_channels=1, num_classes=4, which="last")
    expected = last["members"]["model"]["model"]
    assert model.state_dict().keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(model.state_dict()[k], v), k
    best = load_file(grown / "best-model.pt", WEIGHTS_FORMAT)
    model = saved.model(in_channels=1, num_classes=4, which="best")
    for k, v in best["model"].items():
        assert torch.equal(model.state_dict()[k], v), k
    # open_run replays the surgery through the trainer (another path): the same network
    trainer = resprout.open_run(grown, methods=[em.GrowMidEpoch])
    for k, v in trainer.members["model"].model.state_dict().items():
        assert torch.equal(saved.model(in_channels=1, num_classes=4).state_dict()[k], v), k


def test_refusals_are_one_line_of_the_reader_s_kind(tmp_path, grown):
    with pytest.raises(CheckpointError, match="does not exist"):
        SavedRun.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^teacher: .*not a resprout run directory \(no run.json\)$"):
        SavedRun.open(tmp_path / "empty", what="teacher")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "run.json").write_text((grown / "run.json").read_text())
    with pytest.raises(CheckpointError, match="has no checkpoint yet"):
        resprout.open_run(bare, methods=[em.GrowMidEpoch])
    with pytest.raises(ConfigError, match=r"^analyze: .* has no checkpoint yet"):
        SavedRun.open(bare, what="analyze:").checkpoint()
    with pytest.raises(ConfigError, match=r"holds no weights \(no checkpoint.pt and no best-model.pt\)"):
        SavedRun.open(bare, what="teacher").weights("model", "last-or-best")


def test_the_run_s_own_files():
    for name in ("checkpoint.pt", "run.json", "train.log", ".lock", "best-model.pt", "best-peer_1.pt"):
        assert is_own_file(name), name
    for name in ("slim.pt2", "best-model.pt2", "checkpoint.pt.tmp", "notes.txt"):
        assert not is_own_file(name), name
