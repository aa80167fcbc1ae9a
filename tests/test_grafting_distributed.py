"""Grafting with one peer per process (torchrun, gloo, 127.0.0.1) against the same run in one process (staggered
ring, per-peer learning rates, BN statistics re-estimated and momentum reset after each graft)."""

from __future__ import annotations

import json

import pytest
import torch

from resprout.engine.checkpoint import load_file
from resprout.run import train
from tests.test_distributed import torchrun

pytestmark = pytest.mark.slow  # every test starts torchrun

ARGS = ["method=graft", "graft.peers=2", "graft.ring=staggered", "graft.lr_factors=cosine", "graft.bn=reestimate",
        "graft.bn_batches=3", "graft.momentum=reset", "data=synthetic",
        "data.num_classes=4", "data.n_train=256", "data.n_test=48", "data.image_size=8", "model=cnn", "width=0.5",
        "epochs=3", "batch_size=32", "eval_batch_size=64", "lr=0.05", "threads=1", "seed=3", "progress=none"]


def test_one_peer_per_rank_gives_the_weights_and_results_of_one_process(tmp_path):
    proc = torchrun(["train", *ARGS, "--out", str(tmp_path / "ranks"), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads(proc.stdout)
    keys = dict(a.split("=", 1) for a in ARGS)
    single = train(**keys, out=tmp_path / "single")
    a, b = load_file(tmp_path / "single" / "checkpoint.pt"), load_file(tmp_path / "ranks" / "checkpoint.pt")
    assert set(b["members"]) == {"peer_1", "peer_2"} and len(b["ranks"]) == 2
    for m in ("peer_1", "peer_2"):
        for k, v in a["members"][m]["model"].items():
            assert torch.equal(v, b["members"][m]["model"][k]), f"{m}.{k}"
    # the peers differ (staggered ring, own lr): the comparison is not between two copies of one network
    assert not torch.equal(a["members"]["peer_1"]["model"]["conv1.weight"],
                           a["members"]["peer_2"]["model"]["conv1.weight"])
    assert ranks["final"] == single["final"] and set(ranks["final"]) == {"peer_1", "peer_2", "ensemble"}
    by_peer = ranks["grafting"]["by_peer"]
    assert by_peer["peer_1"]["last_alphas"] == single["grafting"]["by_peer"]["peer_1"]["last_alphas"]
    assert by_peer["peer_1"]["grafts"] + by_peer["peer_2"]["grafts"] == 2  # staggered: one direction per graft


def test_a_peer_count_that_does_not_match_the_process_count_is_one_line(tmp_path):
    proc = torchrun(["train", *ARGS, "graft.peers=3", "--out", str(tmp_path / "bad")], tmp_path)
    assert proc.returncode != 0
    ours = [l for l in proc.stderr.splitlines() if l.startswith("resprout: error:")]
    # Each rank refuses with the same line, unless torchrun stopped it first because a peer had already exited:
    # that rank says it was interrupted during start-up, and nothing else.
    refusals = [l for l in ours if "interrupted during start-up" not in l]
    assert refusals and all(l == refusals[0] for l in refusals), proc.stderr[-2000:]
    assert "graft.peers=3 but torchrun started 2 processes" in refusals[0] and "--nproc_per_node=3" in refusals[0]
    assert not (tmp_path / "bad").exists()
