"""An API and help that explain themselves: ``help(resprout.train)``, method options as nested dicts, a custom model
that does not fit the data, commands that reopen a custom-model run, and ``resprout keys`` / ``--help``."""

from __future__ import annotations

import dataclasses
import inspect
import pydoc
import re
import sys

import pytest
import torch
from torch import nn

import resprout
import resprout.run
from resprout import describe
from resprout.cli import build_parser, main
from resprout.config import FIELDS, KEYS, load_config, make_config
from resprout.errors import ConfigError
from resprout.methods import METHODS, available_methods, get_method
from resprout.models import available_models, model_options
from tests.conftest import synthetic


class TinyNet(nn.Module):
    """A user's network for 1x8x8 images and 4 classes (importable as tests.test_api_help:TinyNet)."""

    def __init__(self, in_channels: int = 1, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))

    def forward(self, x):
        return self.head(self.body(x))


# -- help(resprout.train) ----------------------------------------------------------------------------------------------
def test_help_shows_the_real_signature_and_docstring():
    assert resprout.train is resprout.run.train and resprout.resume is resprout.run.resume
    text = pydoc.render_doc(resprout.train, renderer=pydoc.plaintext)
    params = inspect.signature(resprout.run.train).parameters
    assert {"config", "out", "module", "train", "val", "test", "store", "save", "keys"} <= set(params)
    for name in params:
        assert f"{name}:" in text or f"**{name}" in text, name
    assert "Train a run and return its results" in text and "ke={\"split_rate\": 0.3}" in text
    assert "train``, ``test``" in text  # the user-data arguments are explained
    assert "resume" in dir(resprout) and "train" in dir(resprout)


# -- nested method options ---------------------------------------------------------------------------------------------
def test_method_options_as_nested_dicts_equal_dotted_keys_and_a_toml_table(tmp_path):
    nested = make_config(method="ke+ls", ke={"split_rate": 0.3, "split": "wels"}, ls={"smoothing": 0.2},
                         member={"model": {"lr": 0.05}})
    dotted = make_config(**{"method": "ke+ls", "ke.split_rate": 0.3, "ke.split": "wels", "ls.smoothing": 0.2,
                            "member.model.lr": 0.05})
    path = tmp_path / "run.toml"
    path.write_text('method = "ke+ls"\n[ke]\nsplit_rate = 0.3\nsplit = "wels"\n[ls]\nsmoothing = 0.2\n'
                    '[member.model]\nlr = 0.05\n')
    assert nested == dotted == load_config(path)
    assert nested.method_options == {"ke": {"split_rate": 0.3, "split": "wels"}, "ls": {"smoothing": 0.2}}


def test_a_bad_nested_option_is_one_line():
    with pytest.raises(ConfigError, match="unknown option ke.split_rat; allowed: ke.split, ke.split_rate") as e:
        resprout.train(ke={"split_rat": 0.3}, save=False, **synthetic(method="ke"))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"ke.split_rate: 2.0 \(must be"):
        resprout.train(ke={"split_rate": 2.0}, save=False, **synthetic(method="ke"))


# -- a custom model that does not fit the data -------------------------------------------------------------------------
@pytest.mark.parametrize("module,numbers", [
    (lambda: TinyNet(in_channels=3), ("takes 3 input channels", "has 1")),
    (lambda: TinyNet(classes=10), ("outputs 10 class scores", "has 4 classes")),
])
def test_a_model_that_does_not_fit_the_data_is_one_line_naming_both_numbers(tmp_path, module, numbers):
    with pytest.raises(ConfigError) as e:
        resprout.train(module=module, out=tmp_path / "run", **synthetic())
    message = str(e.value)
    assert "\n" not in message and all(n in message for n in numbers), message
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_the_fit_check_changes_nothing():
    """One dry forward in eval mode under a forked RNG: the same run with and without it."""
    from resprout.models.fit import check_model_fits

    torch.manual_seed(5)
    net = TinyNet().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = torch.get_rng_state()
    check_model_fits(net, (1, 8, 8), 4)
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert torch.equal(torch.get_rng_state(), state)


# -- reopening a run made with a custom module -------------------------------------------------------------------------
KE = synthetic(method="ke", epochs=1, ke={"split_rate": 0.5})


@pytest.mark.slow
def test_slim_rebuilds_an_importable_custom_module_by_itself(tmp_path, capsys, monkeypatch):
    """The factory lives in the user's own file; slim runs later, from another directory, without it on the path."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "mynets.py").write_text("from tests.test_api_help import TinyNet\n\n\n"
                                   "class SmallNet(TinyNet):\n    pass\n")
    monkeypatch.syspath_prepend(str(src))
    import mynets

    resprout.train(module=mynets.SmallNet, out=tmp_path / "run", **KE)
    info = resprout.run.read_run_file(tmp_path / "run")
    assert (info["module"], info["module_dir"]) == ("mynets:SmallNet", str(src.resolve()))
    monkeypatch.delitem(sys.modules, "mynets")
    sys.path.remove(str(src))
    monkeypatch.chdir(tmp_path / "run")
    assert main(["slim", str(tmp_path / "run"), "--out", str(tmp_path / "slim.pt2")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "slim.pt2").is_file()


def test_a_custom_module_that_cannot_be_imported_is_one_line_then_module_works(tmp_path, capsys):
    resprout.train(module=lambda: TinyNet(), out=tmp_path / "run", **KE)  # a lambda has no import path
    assert "module" not in resprout.run.read_run_file(tmp_path / "run")
    for argv in (["slim", str(tmp_path / "run"), "--out", str(tmp_path / "s.pt2")], ["resume", str(tmp_path / "run")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--module package.module:Factory" in err, err
    assert main(["resume", str(tmp_path / "run"), "--module", "tests.test_api_help:nothing"]) == 2
    assert "has no attribute 'nothing'" in capsys.readouterr().err
    assert main(["resume", str(tmp_path / "run"), "--module", "tests.test_api_help:TinyNet", "--quiet"]) == 0


# -- resprout keys and --help ------------------------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _says_something(key: str, meaning: str) -> bool:
    """At least three words that are not the key's own (``optimizer: optimizer`` says nothing)."""
    own = set(_words(key))
    return len([w for w in _words(meaning) if w not in own]) >= 3


def test_keys_lists_every_key_with_a_meaning_that_says_something(capsys):
    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    parts, failed = describe.sections()
    rows = [r for _, rows in parts for r in rows]
    for key, _, meaning in rows:
        assert _says_something(key, meaning), f"{key}: {meaning!r}"
        assert f"| {key} " in out
    keys = {r[0] for r in rows}
    assert set(KEYS) <= keys  # every run key
    loaded = [n for n in available_methods() if not any(f.startswith(n + " (") for f in failed)]
    for name in loaded:
        assert f"method={name}" in keys
        for f in dataclasses.fields(get_method(name).Options):
            assert f"{name}.{f.name}" in keys
    for model in available_models():
        for opt in model_options(model):
            assert f"model.{opt}" in keys
    assert {"data.labels", "data.n_train"} <= keys and "member.<name>.lr" in keys
    assert {"input", "classes", "convention"} <= keys  # resprout profile's keys
    assert "Traceback" not in out


def test_keys_names_an_unfinished_method_in_one_line(capsys):
    METHODS.add("halfdone", "resprout.methods.not_written_yet:HalfDone", "a method whose module is not written")
    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "halfdone" in line]
    assert len(lines) == 1 and lines[0].startswith("not available in this install") and "Traceback" not in out
    assert "halfdone" not in describe.installed_methods()  # nor does --help name it


def test_help_names_only_methods_that_exist(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    names = describe.installed_methods()
    assert f"Methods here: {', '.join(names)}" in text
    for name in names:
        get_method(name)  # every method --help names can be built
    assert FIELDS  # the config is importable beside it
