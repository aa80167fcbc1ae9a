"""Mutual learning with one peer per rank: 2 gloo processes on 127.0.0.1 compute exactly what one process does."""

from __future__ import annotations

import json

import pytest
import torch

from resprout.engine.checkpoint import load_file
from resprout.run import train
from tests.conftest import synthetic
from tests.test_distributed import torchrun

pytestmark = pytest.mark.slow  # every test starts torchrun

CLI_KEYS = ["data=synthetic", "data.num_classes=4", "data.n_train=256", "data.n_test=48", "data.image_size=8",
            "model=cnn", "width=0.5", "epochs=2", "batch_size=32", "eval_batch_size=64", "lr=0.05", "progress=none",
            "threads=1", "seed=0", "method=dml", "dml.update=simultaneous"]


@pytest.mark.parametrize("data", ["shared", "own"])
def test_two_peers_on_two_ranks_equal_two_peers_in_one_process(tmp_path, data):
    """data=shared exchanges the peers' logits; data=own exchanges every peer's batch and the predictions of it."""
    dml = {"data": data, "update": "simultaneous"}  # the one form that places a peer per rank
    one = train(**synthetic(method="dml", epochs=2, seed=0, method_options={"dml": dml}), out=tmp_path / "one")
    proc = torchrun(["train", *CLI_KEYS, "dml.placement=per_rank", f"dml.data={data}", "--out",
                     str(tmp_path / "ranks"), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)
    a, b = (load_file(tmp_path / d / "checkpoint.pt")["members"] for d in ("one", "ranks"))
    assert set(a) == set(b) == {"peer_1", "peer_2"}
    for member in a:
        for k, v in a[member]["model"].items():
            assert torch.equal(v, b[member]["model"][k]), f"{member}.{k}"
    assert two["final"] == one["final"]  # every peer and the ensemble, gathered to rank 0
    assert two["generations"] == one["generations"]


def test_a_peer_count_that_does_not_match_the_processes_is_refused(tmp_path):
    proc = torchrun(["train", *CLI_KEYS, "dml.placement=per_rank", "dml.peers=3", "--out", str(tmp_path / "bad")],
                    tmp_path)
    assert proc.returncode != 0  # torchrun exits 1 itself; each worker exited 2 after its one line
    assert "exitcode  : 2" in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("resprout: error:")]
    assert lines and all("dml.peers=3 with dml.placement=per_rank needs 3 processes" in l and "has 2" in l
                         for l in lines), proc.stderr[-2000:]
    assert not (tmp_path / "bad").exists()
