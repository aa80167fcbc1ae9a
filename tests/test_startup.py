"""Start-up: the CLI's quick commands import no torch, a training run imports neither the compiler
(``torch._dynamo``) nor scikit-learn nor matplotlib, and the optimizers that avoid the compiler's import train
exactly like torch's own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from resprout import lazy_dynamo
from tests.conftest import cli_env

PROBE = r"""
import json, sys
from resprout.cli import main
seen = {}
for argv in (["--help"], ["runs"], ["keys"]):
    try:
        main(argv)
    except SystemExit:
        pass
    seen[argv[0]] = "torch" in sys.modules
import resprout
resprout.train(data="digits", model="cnn", epochs=1, per_class=10, threads=1, progress="none", save=False)
seen["train"] = {m: m in sys.modules for m in ("torch._dynamo", "sklearn", "matplotlib")}
from resprout.surgery import profile_model
from resprout.models import build_model
profile_model(build_model("resnet20", in_channels=3, num_classes=10), (3, 32, 32))
seen["profile"] = "torch._dynamo" in sys.modules
import torch
from resprout import lazy_dynamo
from tests.test_startup import CASES, _train
states = [_train(lazy_dynamo.eager(cls), **kw) for cls, kw in CASES]  # the eager path: no compiler loaded
seen["eager"] = "torch._dynamo" in sys.modules
reference = [_train(cls, **kw) for cls, kw in CASES]  # torch's own classes, in the same numeric environment
torch.save([states, reference], sys.argv[1])
print(json.dumps(seen))
"""
CASES = [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
         (torch.optim.Adam, {"lr": 0.01, "betas": (0.8, 0.99)})]


@pytest.mark.slow
def test_quick_commands_and_a_run_import_only_what_they_need(tmp_path):
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "eager.pt")], env=cli_env(tmp_path),
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["--help"] is False and seen["runs"] is False  # no torch for --help and runs
    assert seen["train"] == {"torch._dynamo": False, "sklearn": False, "matplotlib": False}
    assert seen["profile"] is False
    assert seen["eager"] is False
    # what the optimizers computed without the compiler loaded is what torch's own classes compute
    states, reference = torch.load(tmp_path / "eager.pt", weights_only=True)
    for got, ref in zip(states, reference):
        _assert_same(ref, got)


def _assert_same(ref: tuple[dict, dict], got: tuple[dict, dict]) -> None:
    (ref_net, ref_opt), (net, opt) = ref, got
    for k in ref_net:
        assert torch.equal(net[k], ref_net[k]), k
    assert opt["param_groups"] == ref_opt["param_groups"]
    for i, st in ref_opt["state"].items():
        for k, v in st.items():
            assert torch.equal(opt["state"][i][k], v) if torch.is_tensor(v) else opt["state"][i][k] == v


def _train(opt_cls, **kw) -> tuple[dict, dict]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    opt = opt_cls([{"params": net[0].parameters(), "weight_decay": 1e-3}, {"params": net[3].parameters()}], **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.state_dict(), opt.state_dict()


@pytest.mark.parametrize("cls,kw", CASES, ids=["sgd", "adam"])
def test_the_eager_optimizers_step_exactly_like_torch(cls, kw):
    """In this process the compiler may be loaded already: then the eager class hands over to torch's own step."""
    eager = lazy_dynamo.eager(cls)
    assert eager is not cls and issubclass(eager, cls) and eager.__name__ == cls.__name__
    _assert_same(_train(cls, **kw), _train(eager, **kw))


def test_the_eager_step_keeps_hooks_closures_and_grad_mode():
    p = nn.Parameter(torch.ones(3))
    opt = lazy_dynamo.eager(torch.optim.SGD)([p], lr=0.5)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 3.0
    assert calls == ["pre", "post"] and torch.equal(p.detach(), torch.zeros(3))
    assert torch.is_grad_enabled()
