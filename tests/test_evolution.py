"""Knowledge Evolution: split masks, re-initialization, the real slim network, generations, composition, CLI."""

from __future__ import annotations

import copy
import json
import math
import subprocess

import pytest
import torch
from torch import nn

from resprout.errors import ConfigError
from resprout.methods.evolution import (default_init, fit_hypothesis, hypothesis_magnitudes, kels_masks,
                                        reestimate_batchnorm, reinitialize, wels_masks)
from resprout.methods.evolution.hypotheses import kels_plan
from resprout.models import build_model
from resprout.run import train
from resprout.surgery.channels import example_input, layer_masks, zero_outside
from tests.conftest import PYTHON, cli_env, synthetic
from tests.test_trainer import CRASH, Crash, assert_same_weights, metric_rows, weights


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that equivalence tests can fail."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


# -- masks -----------------------------------------------------------------------------------------------------------
def test_wels_masks_have_exactly_the_papers_count_and_are_seeded():
    model = build_model("resnet20", in_channels=3, num_classes=10)
    masks = wels_masks(model, 0.3, seed=0)
    weights_2d = {n for n, p in model.named_parameters() if p.ndim >= 2}
    assert set(masks) == weights_2d  # conv and linear weights; BN and biases are not split
    for name, p in model.named_parameters():
        if name in masks:
            assert masks[name].sum().item() == round(0.3 * p.numel())
    again = wels_masks(model, 0.3, seed=0)
    other = wels_masks(model, 0.3, seed=1)
    assert all(torch.equal(masks[n], again[n]) for n in masks)
    assert any(not torch.equal(masks[n], other[n]) for n in masks)


def test_kels_masks_of_resnet18_match_the_official_mask_sums():
    """Mask sums of ImageNet-style ResNet-18, s_r = 0.5, 100 classes, as logged by the official code."""
    model = build_model("resnet18", in_channels=3, num_classes=100, stem="imagenet")
    masks = kels_masks(model, (3, 64, 64), 0.5)
    sums = {n.removesuffix(".weight"): int(m.sum()) for n, m in masks.items()}
    assert sums["conv1"] == 4704  # 32 x 3 x 7 x 7: the first conv keeps every input channel
    assert sums["layer1.0.conv1"] == sums["layer1.1.conv2"] == 9216
    assert sums["layer2.0.conv1"] == 18432 and sums["layer2.0.conv2"] == 36864
    assert sums["layer2.0.downsample.0"] == 2048
    assert sums["layer3.0.conv2"] == 147456
    assert sums["layer4.0.conv2"] == sums["layer4.1.conv2"] == 589824
    assert sums["fc"] == 25600  # 100 x 256: every class is kept
    assert not any("bn" in n or n.endswith("bias") for n in masks)


def test_kels_masks_follow_the_graph_not_the_channel_count():
    """A first conv with 3 outputs that is NOT fed by the image, and a 3-channel first layer that is."""
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 8, 3),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    masks = kels_masks(net, (1, 8, 8), 0.5)
    assert masks["0.weight"][:2].all() and not masks["0.weight"][2:].any()  # reads the image: all inputs kept
    assert masks["3.weight"][:4, :2].all() and masks["3.weight"].sum() == 4 * 2 * 9  # 3 inputs -> first ceil(1.5)
    assert masks["6.weight"][:, :4].all() and masks["6.weight"].sum() == 5 * 4  # classifier: all 5 classes


def test_kels_concat_inputs_keep_the_prefix_of_every_chunk():
    model = build_model("densenet-bc", in_channels=3, num_classes=10, depth=10, growth=4)
    graph, plan, layers = kels_plan(model, (3, 16, 16), 0.5)
    cats = [op for op in graph.ops if op.kind == "cat"]
    assert cats
    op = cats[0]
    sizes = op.info["sizes"]
    expected, offset = [], 0
    for size in sizes:
        expected += [offset + c for c in range(math.ceil(0.5 * size))]
        offset += size
    assert plan[op.output] == expected


def test_depthwise_follows_its_input():
    # (grouped convolutions keep the prefix of every group: tests/test_evolution_models.py)
    model = build_model("mobilenetv2", in_channels=3, num_classes=10)
    masks = kels_masks(model, (3, 32, 32), 0.5)
    dw = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1][0]
    mask = masks[f"{dw}.weight"]
    c = mask.shape[0]
    assert mask[: math.ceil(c / 2)].all() and not mask[math.ceil(c / 2):].any()


# -- re-initialization -------------------------------------------------------------------------------------------------
def test_reinitialize_changes_only_the_reset_hypothesis_with_the_default_initializer():
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, num_classes=10)
    masks = kels_masks(model, (1, 8, 8), 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fresh = default_init(model, masks)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # default_init leaves the model
    reinitialize(model, masks, fresh)
    for name, p in model.named_parameters():
        if name not in masks:
            assert torch.equal(p, before[name])  # BN and biases carry over
            continue
        m = masks[name]
        assert torch.equal(p[m], before[name][m])  # the fit hypothesis is untouched
        assert not torch.equal(p[~m], before[name][~m])
        fan_in = p[0].numel()
        assert p[~m].abs().max() <= 1 / math.sqrt(fan_in) + 1e-6  # PyTorch default: kaiming_uniform(a=sqrt(5))
    fit, reset = hypothesis_magnitudes(model, masks)["conv1.weight"] if "conv1.weight" in masks else (1, 1)
    assert fit > 0 and reset > 0


# -- the slim network --------------------------------------------------------------------------------------------------
SLIM_CASES = [("resnet20", 3, 16, {}), ("resnet50", 3, 32, {}), ("vgg11", 3, 16, {}),
              ("vgg16", 3, 16, {"head": "gap"}), ("mobilenetv2", 3, 16, {}),
              ("densenet-bc", 3, 16, {"depth": 22, "growth": 6}), ("wrn-16-4", 3, 16, {}), ("cnn", 1, 8, {})]


@pytest.mark.parametrize("name, c, size, kw", SLIM_CASES, ids=[c[0] + str(c[3] or "") for c in SLIM_CASES])
def test_slim_network_equals_the_dense_network_with_the_reset_hypothesis_zeroed(name, c, size, kw):
    torch.manual_seed(0)
    dense = randomize_bn(build_model(name, in_channels=c, num_classes=10, **kw))
    slim = fit_hypothesis(dense, (c, size, size), 0.5)
    dense_params = sum(p.numel() for p in dense.parameters())
    assert sum(p.numel() for p in slim.parameters()) < 0.4 * dense_params  # really smaller, not zeros
    zeroed = copy.deepcopy(dense)
    _, _, layers = kels_plan(zeroed, (c, size, size), 0.5)
    zero_outside(zeroed, layers, layer_masks(zeroed, layers))
    x = example_input((c, size, size), batch=4)
    zeroed.eval()
    slim.eval()
    with torch.no_grad():
        expected, got = zeroed(x), slim(x)
    assert got.shape == expected.shape == (4, 10)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.vision  # runs in the vision environment (make test-vision), skips elsewhere
def test_torchvision_resnet18_slims_when_torchvision_is_present():
    from resprout.models.external import import_package

    tv = import_package("tv")
    dense = randomize_bn(tv.models.resnet18(num_classes=10))
    slim = fit_hypothesis(dense, (3, 32, 32), 0.5)
    zeroed = copy.deepcopy(dense)
    _, _, layers = kels_plan(zeroed, (3, 32, 32), 0.5)
    zero_outside(zeroed, layers, layer_masks(zeroed, layers))
    x = example_input((3, 32, 32), batch=2)
    with torch.no_grad():
        assert torch.allclose(slim.eval()(x), zeroed.eval()(x), atol=1e-5)


def test_bn_reestimation_recomputes_statistics_from_batches():
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, num_classes=10, width=0.25).eval()
    batches = [torch.randn(16, 1, 8, 8) * 3 + 2 for _ in range(4)]
    reestimate_batchnorm(model, batches)
    bn = model.get_submodule([n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)][0])
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][0]
    with torch.no_grad():
        acts = torch.cat([conv(b) for b in batches])
    assert torch.allclose(bn.running_mean, acts.mean((0, 2, 3)), atol=1e-4)
    assert bn.momentum == 0.1 and not model.training


# -- generations in the trainer ----------------------------------------------------------------------------------------
def test_ke_generation_one_is_the_plain_baseline_and_every_generation_reports_dense_and_slim():
    keys = synthetic(epochs=2)
    plain = train(**keys, save=False)
    ke = train(**dict(keys, method="ke", generations=3), save=False)
    gens = ke["generations"]
    assert len(gens) == 3
    # the mask is not applied in the forward pass: generation 1 of KE is exactly the plain run (N_1)
    assert gens[0]["model"]["test_top1"] == plain["generations"][0]["model"]["test_top1"]
    for g in gens:
        m = g["model"]
        assert {"test_top1", "slim_top1", "slim_bnfix_top1", "fit_abs", "reset_abs", "slim_params"} <= set(m)
        assert m["slim_params"] < 0.4 * sum(p.numel() for p in build_model(
            "cnn", in_channels=1, num_classes=4, width=0.5).parameters())


def test_ke_composes_with_label_smoothing_and_cskd_and_wels_has_no_slim():
    result = train(**synthetic(method="ke+cskd+ls", generations=2, **{"method_options": {
        "ke": {"split": "wels", "split_rate": 0.7}, "cskd": {"temperature": 4, "weight": 3}}}), save=False)
    assert len(result["generations"]) == 2
    assert "slim_top1" not in result["generations"][0]["model"]
    assert result["final"]["model"]["top1"] > 0.3


@pytest.mark.slow
@pytest.mark.parametrize("opts", [{"reinit": "zeros", "reset_bn": True}, {"reinit": "initial"},
                                  {"handover": "best"}])
def test_ke_options_run_and_resume_exactly(tmp_path, opts):
    keys = synthetic(method="ke+test_crash", generations=3, epochs=2, val_split=0.25 if opts.get("handover") else 0,
                     method_options={"ke": opts})
    train(**keys, methods=[Crash], out=tmp_path / "full")
    CRASH["at"] = (2, 0, 3)  # inside the third generation
    with pytest.raises(RuntimeError):
        train(**keys, methods=[Crash], out=tmp_path / "crashed")
    from resprout.run import resume

    resume(tmp_path / "crashed", methods=[Crash], progress="none")
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "crashed"))
    assert metric_rows(tmp_path / "full") == metric_rows(tmp_path / "crashed")


def test_ke_option_errors():
    with pytest.raises(ConfigError, match="ke.handover=best needs a validation split"):
        train(**synthetic(method="ke", method_options={"ke": {"handover": "best"}}), save=False)
    with pytest.raises(ConfigError, match="ke.split_rate"):
        train(**synthetic(method="ke", method_options={"ke": {"split_rate": 1.0}}), save=False)


# -- the command-line contract ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ke_train_and_slim_commands(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "resprout", "train", "method=ke", "ke.split=kels", "ke.split_rate=0.5",
                           "generations=3", "epochs=2", "data=digits", "model=resnet20", "--json"],
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [g["generation"] for g in result["generations"]] == [1, 2, 3]
    for g in result["generations"]:
        assert 0 <= g["model"]["slim_top1"] <= 1 and 0 <= g["model"]["test_top1"] <= 1
    assert result["generations"][-1]["model"]["test_top1"] > 0.5
    slim_path = tmp_path / "slim.pt"
    proc = subprocess.run([PYTHON, "-m", "resprout", "slim", result["run_dir"], "--out", str(slim_path), "--json"],
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(proc.stdout)
    assert meta["params"] < 0.3 * meta["dense_params"] and meta["macs"] < 0.3 * meta["dense_macs"]
    # a user loads it with plain torch: no resprout import, no model class
    code = ("import sys, torch; m = torch.export.load(open(sys.argv[1], 'rb')).module(); "
            "y = m(torch.rand(3, 1, 8, 8)); assert y.shape == (3, 10), y.shape; "
            "assert not any(k.startswith('resprout') for k in sys.modules); print('ok')")
    check = subprocess.run([PYTHON, "-c", code, str(slim_path)], capture_output=True, text=True, timeout=120,
                           cwd=tmp_path)
    assert check.stdout.strip() == "ok", check.stderr
    proc = subprocess.run([PYTHON, "-m", "resprout", "slim", result["run_dir"], "--out", str(tmp_path / "x.pt")],
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0


def test_slim_refuses_runs_without_kels(tmp_path, capsys):
    from resprout.cli import main

    train(**synthetic(epochs=1), out=tmp_path / "ce")
    assert main(["slim", str(tmp_path / "ce"), "--out", str(tmp_path / "s.pt")]) == 2
    assert "is not a Knowledge Evolution run" in capsys.readouterr().err


@pytest.mark.slow
def test_profile_reproduces_table_5_of_the_paper_and_reports_true_costs(capsys):
    from resprout.cli import main

    args = ["profile", "model=resnet18", "stem=imagenet", "input=3x224x224", "classes=100", "ke.split_rate=0.5"]
    assert main(args + ["convention=ke-paper", "--json"]) == 0
    paper = json.loads(capsys.readouterr().out)
    truncate = lambda v, scale: math.floor(v / scale * 100) / 100  # noqa: E731  (the paper truncates)
    assert truncate(paper["dense"]["ops"], 1e9) == 3.63 and truncate(paper["dense"]["params"], 1e6) == 22.44
    assert truncate(paper["slim"]["ops"], 1e9) == 0.96 and truncate(paper["slim"]["params"], 1e6) == 5.64
    assert paper["slim"]["printed"] == {"gops": "0.968435", "mparams": "5.644260"}
    assert main(args + ["--json"]) == 0
    true = json.loads(capsys.readouterr().out)
    assert true["dense"]["params"] == 11_227_812 and true["slim"]["params"] == 2_824_580
    assert true["dense"]["ops"] == 2 * true["dense"]["macs"]
    assert 0.25 < true["slim"]["macs"] / true["dense"]["macs"] < 0.28
