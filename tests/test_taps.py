"""Feature taps: captures equal tensors computed another way, gradients, inputs, detach, removal, surgery, DDP, and
``last_conv_feature`` on every model of the zoo."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resprout.engine.taps import FeatureTaps, last_conv_feature
from resprout.errors import ConfigError
from resprout.models import available_models, build_model


def resnet(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model("resnet20", in_channels=3, num_classes=10, width=0.5, **kw).eval()


def stem(m, x):
    return m.maxpool(m.relu(m.bn1(m.conv1(x))))


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(4, 3, 16, 16)


def test_outputs_equal_layers_run_by_hand(x):
    m = resnet()
    taps = FeatureTaps()
    for p in ("layer1", "layer2.0.conv1", "", "fc"):
        taps.request("model", p)
    taps.attach("model", m)
    with torch.no_grad():
        logits = m(x)
        l1 = m.layer1(stem(m, x))
        ref_conv = m.layer2[0].conv1(l1)
    # the reference forward above went through the tapped modules again: read what the model's forward captured
    taps.clear()
    with torch.no_grad():
        m(x)
    torch.testing.assert_close(taps.output("model", "layer1"), l1)
    torch.testing.assert_close(taps.output("model", "layer2.0.conv1"), ref_conv)
    torch.testing.assert_close(taps.output("model", ""), logits)
    torch.testing.assert_close(taps.output("model", "fc"), logits)
    assert taps.calls("model", "layer1") == 1


def test_inputs_captured_on_request(x):
    m = resnet()
    taps = FeatureTaps()
    taps.request("model", "layer2", inputs=True)
    taps.request("model", "layer3")
    taps.attach("model", m)
    with torch.no_grad():
        m(x)
        ref = m.layer1(stem(m, x))
    torch.testing.assert_close(taps.input("model", "layer2"), ref)
    with pytest.raises(ConfigError, match="without inputs=True"):
        taps.input("model", "layer3")
    # asking again is idempotent, and can add inputs
    taps.request("model", "layer3")
    taps.request("model", "layer3", inputs=True)
    with torch.no_grad():
        m(x)
    torch.testing.assert_close(taps.input("model", "layer3"), taps.output("model", "layer2"))
    assert sum(len(mod._forward_hooks) for mod in m.modules()) == 2  # renewed, not duplicated


def test_gradient_flows_through_a_tap_and_detach_cuts_it(x):
    m = resnet().train()
    ref = copy.deepcopy(m)
    taps = FeatureTaps()
    taps.request("model", "layer2")
    taps.request("model", "layer1", detach=True)
    taps.attach("model", m)
    logits = m(x)
    f = taps.output("model", "layer2")
    assert f.requires_grad and not taps.output("model", "layer1").requires_grad
    (F.cross_entropy(logits, torch.arange(4)) + f.pow(2).mean()).backward()
    # the same loss by hand on an untapped copy with the same weights
    h2 = ref.layer2(ref.layer1(stem(ref, x)))
    out = ref.fc(torch.flatten(ref.avgpool(ref.layer3(h2)), 1))
    (F.cross_entropy(out, torch.arange(4)) + h2.pow(2).mean()).backward()
    for (name, a), b in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    assert m.layer3[0].conv1.weight.grad is not None and m.conv1.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="detach=True"):
        taps.request("model", "layer1")


def test_errors_are_one_clear_line(x):
    m = resnet()
    taps = FeatureTaps()
    taps.request("model", "layer1")
    with pytest.raises(RuntimeError, match="not attached"):
        taps.output("model", "layer1")
    taps.attach("model", m)
    with pytest.raises(ConfigError, match="was not requested") as e:
        taps.output("model", "layer2")
    assert "\n" not in str(e.value) and "'layer1'" in str(e.value)
    with pytest.raises(RuntimeError, match="captured nothing since the last clear") as e:
        taps.output("model", "layer1")
    assert "\n" not in str(e.value)
    with torch.no_grad():
        m(x)
    taps.output("model", "layer1")
    taps.clear()
    with pytest.raises(RuntimeError, match="captured nothing"):
        taps.output("model", "layer1")
    # unknown paths: at request time once attached, at attach time otherwise; with close module names
    with pytest.raises(ConfigError, match=r"member 'model'.*'layer_1'.*close: layer1") as e:
        taps.request("model", "layer_1")
    assert "\n" not in str(e.value)
    assert taps.paths("model") == ["layer1"]
    taps.request("other", "layer2.0.cnov1")
    with pytest.raises(ConfigError, match=r"member 'other'.*'layer2.0.cnov1'.*close: layer2.0.conv1"):
        taps.attach("other", resnet())


def test_zero_cost_without_requests_and_removal(x):
    m = resnet()
    taps = FeatureTaps()
    assert not taps.active
    taps.attach("model", m)
    assert no_hooks(m)
    taps.request("model", "layer3")  # the attached member is hooked at once
    assert taps.active and not no_hooks(m)
    with torch.no_grad():
        m(x)
    assert taps.output("model", "layer3").shape == (4, 32, 4, 4)
    taps.remove("model")
    assert no_hooks(m)
    with pytest.raises(RuntimeError, match="not attached"):
        taps.output("model", "layer3")
    with torch.no_grad():
        m(x)
    assert taps.calls("model", "layer3") == 0
    taps.attach("model", m)  # requests were kept
    with torch.no_grad():
        m(x)
    assert taps.calls("model", "layer3") == 1
    taps.remove(requests=True)
    assert no_hooks(m) and not taps.active


class Twice(nn.Module):
    """Calls one block twice per forward."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.block(self.block(x)).mean((2, 3)))


def test_module_called_twice_keeps_every_call_and_latest_forward(x):
    torch.manual_seed(0)
    m = Twice()
    taps = FeatureTaps()
    taps.request("net", "block", inputs=True)
    taps.attach("net", m)
    with torch.no_grad():
        m(x)
        first = m.block(x)
        second = m.block(first)
    taps.clear()
    with torch.no_grad():
        m(x)
    assert taps.calls("net", "block") == 2
    torch.testing.assert_close(taps.output("net", "block"), second)
    outs = taps.outputs_all("net", "block")
    torch.testing.assert_close(outs[0], first)
    torch.testing.assert_close(outs[1], second)
    torch.testing.assert_close(taps.inputs_all("net", "block")[1], first)
    # a new forward replaces the previous one's captures (bounded memory in evaluation loops)
    with torch.no_grad():
        m(2 * x)
        m(3 * x)
    assert taps.calls("net", "block") == 2
    torch.testing.assert_close(taps.inputs_all("net", "block")[0], 3 * x)
    torch.testing.assert_close(taps.input("net", "block"), taps.outputs_all("net", "block")[0])


def test_frozen_member_under_no_grad(x):
    teacher = resnet(seed=3)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = resnet(seed=4).train()
    taps = FeatureTaps()
    taps.request("teacher", "layer2")
    taps.request("student", "layer2")
    taps.attach("teacher", teacher)
    taps.attach("student", student)
    with torch.no_grad():
        teacher(x)
        ref = teacher.layer2(teacher.layer1(stem(teacher, x)))
    student(x)
    t, s = taps.output("teacher", "layer2"), taps.output("student", "layer2")
    torch.testing.assert_close(t, ref)
    assert not t.requires_grad and s.requires_grad
    F.mse_loss(s, t).backward()
    assert student.conv1.weight.grad is not None


def test_taps_survive_surgery(x):
    old = resnet()
    taps = FeatureTaps()
    taps.request("model", "layer2.0.conv1", inputs=True)
    taps.request("model", "layer2.0")
    taps.attach("model", old)
    with torch.no_grad():
        old(x)
    assert taps.output("model", "layer2.0.conv1").shape[1] == 16
    # "surgery": a deep copy (it carries inert copies of the hooks) with a wider conv at the tapped path
    new = copy.deepcopy(old)
    conv = new.layer2[0].conv1
    wide = nn.Conv2d(conv.in_channels, 24, 3, stride=2, padding=1, bias=False)
    new.layer2[0].conv1 = wide
    new.layer2[0].bn1 = nn.BatchNorm2d(24).eval()
    new.layer2[0].conv2 = nn.Conv2d(24, 16, 3, padding=1, bias=False)
    new.eval()
    with torch.no_grad():
        new(x)  # before attach: the copied hooks capture nothing
    assert taps.output("model", "layer2.0.conv1").shape[1] == 16
    taps.attach("model", new)
    assert no_hooks(old)
    # the copied (inert) hooks were dropped: one pre-hook on the root and one hook per tap remain
    assert sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in new.modules()) == 3
    with torch.no_grad():
        new(x)
        l1 = new.layer1(stem(new, x))
        ref = wide(l1)
    out = taps.output("model", "layer2.0.conv1")
    assert out.shape == (4, 24, 8, 8)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(taps.input("model", "layer2.0.conv1"), l1)
    torch.testing.assert_close(taps.output("model", "layer2.0"), new.layer2[0](l1))
    # the old model's hooks are gone: forwarding it captures nothing
    taps.clear()
    with torch.no_grad():
        old(x)
    assert taps.calls("model", "layer2.0.conv1") == 0 and taps.calls("model", "layer2.0") == 0


def test_copies_and_pickles_of_a_tapped_model_are_inert(x):
    m = resnet()
    taps = FeatureTaps()
    taps.request("model", "layer1")
    taps.attach("model", m)
    buf = io.BytesIO()
    torch.save(m, buf)  # whole-model pickling works with taps attached
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    clone = copy.deepcopy(m)
    with torch.no_grad():
        loaded(x)
        clone(x)
    assert taps.calls("model", "layer1") == 0
    with torch.no_grad():
        m(x)
    assert taps.calls("model", "layer1") == 1


def test_hooks_inner_module_of_ddp(tmp_path, x):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if dist.is_initialized():
        pytest.skip("a process group exists already")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        m = resnet().train()
        ddp = DDP(m)
        taps = FeatureTaps()
        taps.request("model", "layer1")
        taps.attach("model", ddp)
        assert not ddp._forward_hooks and m.layer1._forward_hooks
        logits = ddp(x)
        f = taps.output("model", "layer1")
        assert f.requires_grad
        (logits.sum() + f.sum()).backward()
        with torch.no_grad():
            ref = m.layer1(stem(m, x))
        # train-mode BN: same batch, same statistics
        torch.testing.assert_close(f.detach(), ref)
    finally:
        dist.destroy_process_group()


# -- last_conv_feature ------------------------------------------------------------------------------------------------
EXPECTED = {"cnn": "relu3", "densenet-bc": "features", "densenet-bc-100": "features", "mobilenetv2": "features",
            "resnet18": "layer4", "resnet34": "layer4", "resnet50": "layer4", "vgg11": "features",
            "vgg16": "features", "vgg19": "features", "wrn": "relu", "wrn-16-4": "relu", "wrn-28-10": "relu",
            "wrn-40-2": "relu"}
EXPECTED.update({n: "layer3" for n in ("resnet20", "resnet32", "resnet56", "resnet110")})


def pooling_input(model, x):
    """The reference: what the model's global pooling module reads, recorded by a forward pre-hook."""
    pool = model.classifier[0] if hasattr(model, "features") and isinstance(model.classifier, nn.Sequential) \
        and isinstance(model.classifier[0], nn.AdaptiveAvgPool2d) else model.avgpool
    got = []
    h = pool.register_forward_pre_hook(lambda mod, args: got.append(args[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return got[0]


@pytest.mark.parametrize("name", available_models())
def test_last_conv_feature_on_the_zoo(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    path = last_conv_feature(model, x)
    assert path == EXPECTED.get(name), (name, path)
    taps = FeatureTaps()
    taps.request("model", path)
    taps.attach("model", model)
    ref = pooling_input(model, x)
    assert taps.output("model", path).dim() == 4
    torch.testing.assert_close(taps.output("model", path), ref)


def test_last_conv_feature_matches_hand_forward():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    cnn = build_model("cnn", in_channels=3, num_classes=10).eval()
    r = build_model("resnet20", in_channels=3, num_classes=10).eval()
    taps = FeatureTaps()
    taps.request("cnn", last_conv_feature(cnn, x))
    taps.request("resnet", last_conv_feature(r, x))
    taps.attach("cnn", cnn)
    taps.attach("resnet", r)
    with torch.no_grad():
        cnn(x)
        r(x)
        h = cnn.pool(cnn.relu2(cnn.bn2(cnn.conv2(cnn.relu1(cnn.bn1(cnn.conv1(x)))))))
        h = cnn.relu3(cnn.bn3(cnn.conv3(h)))
        g = r.layer3(r.layer2(r.layer1(stem(r, x))))
    torch.testing.assert_close(taps.output("cnn", "relu3"), h)
    torch.testing.assert_close(taps.output("resnet", "layer3"), g)
    assert last_conv_feature(r, x, innermost=True) == "layer3.2.relu2"
    assert last_conv_feature(build_model("vgg11", in_channels=3, num_classes=10, head="gap"), x) == "features"


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3)
        self.bn = nn.BatchNorm1d(8)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(self.bn(self.conv(x)))), 1))


def test_last_conv_feature_functional_map_is_refused_and_conv1d_works():
    with pytest.raises(ConfigError, match="functional call relu.*no module returns it.*name the path") as e:
        last_conv_feature(Functional(), torch.randn(2, 3, 8, 8))
    assert "\n" not in str(e.value)
    assert last_conv_feature(Conv1dNet(), torch.randn(2, 3, 16)) == "act"
    with pytest.raises(ConfigError, match="no conv or linear classifier"):
        last_conv_feature(nn.Sequential(nn.ReLU(), nn.Flatten()), torch.randn(2, 3, 4, 4))
