"""torchvision and timm models: any import failure is one line (a fake package makes the import fail the way a
torchvision built for another torch does), the hint never suggests an unpinned install, and a real torchvision, when
it imports, builds models that train here."""

from __future__ import annotations

import sys

import pytest
import torch

from resprout.cli import main
from resprout.errors import ConfigError
from resprout.models import build_model
from resprout.models.external import INSTALL_HINT, import_package

NMS = "operator torchvision::nms does not exist"


@pytest.fixture
def broken(tmp_path, monkeypatch):
    """A torchvision that fails at import as PyPI's does beside a CPU torch of another release, and a timm that
    fails because it imports that torchvision."""
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(f"raise RuntimeError({NMS!r})\n")
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "__init__.py").write_text("import torchvision\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("torchvision", "timm"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


@pytest.mark.parametrize("name", ["tv:resnet18", "timm:resnet18"])
def test_a_broken_torchvision_is_one_line(broken, name):
    with pytest.raises(ConfigError) as e:
        build_model(name, in_channels=3, num_classes=10)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"model {name!r} needs {'torchvision' if name.startswith('tv') else 'timm'}, which "
                              f"fails to import (RuntimeError: {NMS})")
    assert torch.__version__ in message and message.endswith(INSTALL_HINT)


def test_the_cli_prints_one_line_and_exits_2(broken, capsys):
    assert main(["profile", "model=tv:resnet18", "input=3x32x32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and NMS in err and "Traceback" not in err


def test_the_hint_never_suggests_an_unpinned_install():
    # `pip install torchvision` (or resprout[torchvision]) would replace torch by the build the newest release pins
    assert "pip install" not in INSTALL_HINT and "torch pinned" in INSTALL_HINT


def test_a_missing_package_is_one_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm":
            raise ModuleNotFoundError("No module named 'timm'", name="timm")
        return real(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "timm", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_timm)
    monkeypatch.setattr("importlib.import_module", lambda n: no_timm(n))
    with pytest.raises(ConfigError, match="needs timm, which is not installed beside torch"):
        build_model("timm:resnet18", in_channels=3, num_classes=10)


@pytest.mark.vision  # runs in the vision environment (make test-vision), skips elsewhere
def test_a_working_torchvision_builds_a_model_for_one_channel_images():
    model = build_model("tv:resnet18", in_channels=1, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


@pytest.mark.vision
def test_a_working_timm_builds_the_same_network_as_torchvision():
    # timm's resnet18 and torchvision's are one architecture: equal parameter shapes, counted by two libraries
    timm_model = build_model("timm:resnet18", in_channels=1, num_classes=7).eval()
    tv_model = build_model("tv:resnet18", in_channels=1, num_classes=7)
    assert sorted(p.shape for p in timm_model.parameters()) == sorted(p.shape for p in tv_model.parameters())
    assert sum(p.numel() for p in timm_model.parameters()) == 11_689_512 - 512 * 993 - 993 - 2 * 64 * 49
    with torch.no_grad():
        assert timm_model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
