"""Network Slimming (Liu et al., ICCV 2017): global |gamma| pruning to a cost target, in a run and from the CLI.

References: the cost counted from the pruned model's own weights, the dense network with the pruned channels
zeroed, and the global ordering of the scales.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from resprout.methods.rejuvenation import real_cost, topology
from resprout.methods.rejuvenation.monitor import layer_costs
from resprout.methods.slimming import prune_split
from resprout.models import build_model
from resprout.run import train
from resprout.surgery.channels import example_input
from resprout.surgery.resize import resize
from tests.conftest import synthetic

SHAPE = (1, 8, 8)


def randomized(name: str, **kw) -> nn.Module:
    model = build_model(name, in_channels=1, num_classes=10, **kw)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("name, kw", [("vgg11", {"width": 0.25}), ("resnet20", {})])
def test_global_pruning_meets_the_cost_and_equals_the_dense_net_with_pruned_channels_zeroed(name, kw):
    model = randomized(name, **kw)
    topo = topology(model, SHAPE)
    judged = topo.monitored()
    full = sum(layer_costs(topo, {k: {None: g.channels} for k, g in topo.groups.items()}).values())
    res = prune_split(model, topo, 0.5 * full, judged=judged)
    pruned = resize(model, res["keep"], example_input(SHAPE)).model
    assert real_cost(pruned, topology(pruned, SHAPE), None) == res["cost"] <= 0.5 * full
    # one global threshold: every kept scale is at least every pruned one (a layer keeps one channel at least)
    kept, gone = [], []
    for key in judged:
        g = model.get_submodule(topo.units[key].bns[0]).weight.detach().abs()
        keep = set(res["keep"][key])
        kept += [float(g[i]) for i in keep if len(keep) > 1]
        gone += [float(g[i]) for i in range(len(g)) if i not in keep]
    assert gone and min(kept) >= max(gone)
    # the pruned network computes what the dense one computes with the pruned channels' scale and shift zeroed
    dense = copy.deepcopy(model)
    with torch.no_grad():
        for key in judged:
            drop = sorted(set(range(topo.units[key].channels)) - set(res["keep"][key]))
            for b in topo.units[key].bns:
                bn = dense.get_submodule(b)
                bn.weight[drop] = 0
                bn.bias[drop] = 0
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = pruned(x), dense(x)
    assert torch.allclose(a, b, atol=1e-5 * float(b.abs().max().clamp(min=1)))
    if name == "resnet20":  # the residual main stream is not pruned
        assert all(k not in res["keep"] for k in topo.order if topo.units[k].mainstream)


def test_a_run_prunes_once_at_the_prune_epoch_and_reports_it():
    res = train(**synthetic(method="slimming", epochs=2, method_options={"slimming": {"target": 0.4}}), save=False)
    rec = res["slimming"]
    assert rec["epoch"] == 1 and rec["cost_after"] <= rec["target"] == pytest.approx(0.4 * rec["cost_before"])
    assert sum(rec["widths_after"].values()) < sum(rec["widths_before"].values())
    assert res["final"]["model"]["top1"] > 0.25
    # a pruned network holds no zero blocks: the paper's count is what its tensors hold, counted here by hand
    counts = rec["counts"]
    assert counts["final"]["paper_params"] == counts["final"]["weights"] == rec["cost_after"]
    assert counts["original"]["weights"] == rec["cost_before"]
    wide, narrow = rec["widths_before"], rec["widths_after"]  # cnn: conv1 1->c1, conv2 c1->c2, conv3 c2->c3, fc
    widths = [[wide[k] for k in wide], [narrow[k] for k in narrow]]
    by_hand = [9 * (w[0] + w[0] * w[1] + w[1] * w[2]) + 4 * w[2] for w in widths]
    assert [counts["original"]["weights"], counts["final"]["weights"]] == by_hand


def test_cli_slimming_json_and_refusal(capsys):
    from resprout.cli import main

    rc = main(["train", "method=slimming", "slimming.target=0.5", "data=digits", "model=cnn", "model.width=0.25",
               "epochs=2", "threads=1", "progress=none", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rec = json.loads(out.out)["slimming"]
    assert rec["cost_after"] <= rec["target"] and set(rec["widths_after"]) == set(rec["widths_before"])
    rc = main(["train", "method=slimming", "slimming.target=2", "data=digits", "model=cnn", "epochs=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "slimming.target" in err and err.strip().count("\n") == 0
