"""Deep mutual learning: the loss, two peers against a hand loop (simultaneous and the paper's sequential update),
the ensemble, per-peer data order, refusals and the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from resprout.config import make_config
from resprout.engine.optim import OPTIM_KEYS, build_optimizer, set_lr
from resprout.errors import ConfigError
from resprout.methods.mutual import dml_loss, mutual_kl, peer_data_seed, peer_seed
from resprout.models import build_model
from resprout.run import create_trainer, train
from tests.conftest import synthetic


def kl(target_logits, logits):
    """KL(softmax(target) || softmax(logits)), batch mean, written out."""
    q = torch.softmax(target_logits, dim=1)
    return (q * (torch.log(q) - torch.log_softmax(logits, dim=1))).sum(1).mean()


def test_mutual_kl_is_the_mean_over_the_other_peers():
    g = torch.Generator().manual_seed(0)
    z, a, b = (torch.randn(5, 4, generator=g) for _ in range(3))
    y = torch.arange(5) % 4
    assert torch.allclose(mutual_kl(z, [a, b]), (kl(a, z) + kl(b, z)) / 2, atol=1e-6)
    assert torch.allclose(dml_loss(z, [a], y, weight=0.5), F.cross_entropy(z, y) + 0.5 * kl(a, z), atol=1e-6)
    z.requires_grad_(True)
    a.requires_grad_(True)
    mutual_kl(z, [a]).backward()
    assert a.grad is None  # the other peer is a target


@pytest.mark.parametrize("update,data", [(None, "shared"), ("simultaneous", "shared"), ("simultaneous", "own"),
                                         ("sequential", "own")])
def test_two_peers_equal_a_hand_loop(update, data):
    """``update=None``: the default, the paper's Algorithm 1 (peers in turn)."""
    dml = {"data": data} if update is None else {"update": update, "data": data}
    update = update or "sequential"
    keys = synthetic(method="dml", epochs=1, method_options={"dml": dml})
    trainer = create_trainer(make_config(**keys), run_dir=None, run_id=None, store_path=None)
    assert list(trainer.members) == ["peer_1", "peer_2"]
    p1 = copy.deepcopy(trainer.members["peer_1"].model)
    result = trainer.fit()

    torch.manual_seed(peer_seed(0, 1))
    p2 = build_model("cnn", in_channels=1, num_classes=4, width=0.5)
    spec = trainer.optim_spec(trainer.members["peer_1"])
    opts = [build_optimizer(p, {k: spec[k] for k in OPTIM_KEYS}) for p in (p1, p2)]
    loader = trainer.train_loader
    streams = [loader.stream(peer_data_seed(0, k)) for k in (0, 1)] if data == "own" else [loader, loader]
    steps = loader.steps(0, 0)
    p1.train(), p2.train()

    def predict(model, x):  # data=own: the other peer's prediction of my batch, eval mode, no gradient
        model.eval()
        with torch.no_grad():
            out = model(x)
        model.train()
        return out

    for s in range(steps):
        (x, y), (x2, y2) = (st.batch(0, 0, s) for st in streams)
        factor = trainer.schedule.factor(s / steps, 1 / steps)
        z1, z2 = p1(x), p2(x2)
        if data == "own":
            assert not torch.equal(x, x2)
        if update == "simultaneous":  # both losses on one forward, the other peer detached, both step
            if data == "own":
                loss = (F.cross_entropy(z1, y) + kl(predict(p2, x), z1) + F.cross_entropy(z2, y2)
                        + kl(predict(p1, x2), z2))
            else:
                loss = F.cross_entropy(z1, y) + kl(z2.detach(), z1) + F.cross_entropy(z2, y) + kl(z1.detach(), z2)
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                set_lr(o, factor)
                o.step()
        else:  # Zhang et al. Algorithm 1: update peer 1, recompute its prediction, then update peer 2
            target = predict(p2, x) if data == "own" else z2.detach()
            opts[0].zero_grad(set_to_none=True)
            (F.cross_entropy(z1, y) + kl(target, z1)).backward()
            set_lr(opts[0], factor)
            opts[0].step()
            if data == "own":  # the updated peer 1 predicts peer 2's batch (eval mode)
                z1 = predict(p1, x2)
            else:
                with torch.no_grad():
                    z1 = p1(x)
            opts[1].zero_grad(set_to_none=True)
            (F.cross_entropy(z2, y2) + kl(z1, z2)).backward()
            set_lr(opts[1], factor)
            opts[1].step()
    for name, ref in (("peer_1", p1), ("peer_2", p2)):
        got = trainer.members[name].model.state_dict()
        for k, v in ref.state_dict().items():
            assert torch.equal(got[k], v), f"{name}.{k}"

    # every peer's final top-1 and the ensemble's (mean probability), on the test split
    x_test, y_test = zip(*trainer.eval_loaders["test"])
    x_test, y_test = torch.cat(x_test), torch.cat(y_test)
    p1.eval(), p2.eval()
    with torch.no_grad():
        probs = (torch.softmax(p1(x_test), 1) + torch.softmax(p2(x_test), 1)) / 2
    assert result["final"]["ensemble"]["top1"] == pytest.approx((probs.argmax(1) == y_test).float().mean().item())
    assert {"peer_1", "peer_2", "ensemble"} <= set(result["final"])
    assert result["generations"][0]["ensemble"]["test_top1"] == result["final"]["ensemble"]["top1"]


def test_refusals(capsys):
    from resprout.cli import main

    with pytest.raises(ConfigError, match="dml.peers"):
        train(**synthetic(method="dml", method_options={"dml": {"peers": 1}}), save=False)
    with pytest.raises(ConfigError, match="sequential"):
        train(**synthetic(method="dml", method_options={"dml": {"update": "sequential", "placement": "per_rank"}}),
              save=False)
    # the default update is the paper's sequential one: one peer per rank asks for simultaneous by name
    with pytest.raises(ConfigError, match="use dml.update=simultaneous"):
        train(**synthetic(method="dml", method_options={"dml": {"placement": "per_rank"}}), save=False)
    # one peer per rank in a single process: the count does not match
    assert main(["train", "method=dml", "dml.peers=2", "dml.placement=per_rank", "dml.update=simultaneous",
                 "data=digits"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs 2 processes" in err[0] and "has 1" in err[0], err


@pytest.mark.slow
def test_cli_contract(tmp_path, capsys):
    from resprout.cli import main

    code = main(["train", "method=dml", "dml.peers=2", "model=cnn", "data=digits", "epochs=3", "threads=1",
                 "progress=none", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    final = json.loads(out.out)["final"]
    assert set(final) == {"peer_1", "peer_2", "ensemble"} and final["ensemble"]["top1"] > 0.8
