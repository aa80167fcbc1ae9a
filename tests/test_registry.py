"""One registry kind (resprout.registry) for methods, models, data sources, surgery operations and loggers; method
objects in the Python API (``train(methods=[...])``) instead of global registration; lazy re-exports."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import resprout
from resprout.config import make_config, option
from resprout.engine.method import Method
from resprout.errors import ConfigError, Interrupted
from resprout.methods import METHODS, register_method
from resprout.methods.classification import LabelSmoothing
from resprout.registry import Registry, first_sentence
from resprout.run import create_trainer
from tests.conftest import PYTHON, cli_env, synthetic


# -- the registry itself -----------------------------------------------------------------------------------------------
def _module(tmp_path, monkeypatch, name: str, text: str) -> None:
    (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_a_lazy_entry_is_listed_without_importing_and_imported_on_first_use(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "h9_lazy_probe", "IMPORTED = True\nclass Thing:\n    pass\n")
    r = Registry("widget")
    r.add("thing", "h9_lazy_probe:Thing", "a thing made elsewhere")
    assert r.names() == ["thing"] and r.describe() == [("thing", "a thing made elsewhere")]
    assert r.target("thing") == "h9_lazy_probe:Thing" and "h9_lazy_probe" not in sys.modules
    obj = r.get("thing")
    assert obj is sys.modules["h9_lazy_probe"].Thing and r.target("thing") is None
    assert r.get("thing") is obj
    r.add("thing", obj)  # the lazy entry's own object again: no clash
    with pytest.raises(ConfigError, match="widget 'thing' is already registered"):
        r.add("thing", object())


def test_a_miss_is_one_line_with_did_you_mean_and_the_allowed_names():
    r = Registry("model", also_allowed=("tv:<name>",), note="or a factory")
    r.add("resnet20", object(), "twenty layers")
    r.add("resnet56", object(), "fifty-six layers")
    with pytest.raises(ConfigError) as e:
        r.get("resnet2O")
    assert str(e.value) == ("unknown model 'resnet2O' (did you mean resnet20?); allowed: resnet20, resnet56, "
                            "tv:<name> (or a factory)")
    with pytest.raises(ConfigError) as e:
        r.get("vgg")
    assert str(e.value) == "unknown model 'vgg'; allowed: resnet20, resnet56, tv:<name> (or a factory)"
    with pytest.raises(ConfigError, match="unknown model 3"):
        r.get(3)


def test_aliases_normalization_replace_and_refusals():
    r = Registry("data source", normalize=lambda s: s.strip().lower().replace("_", "-"))
    a, b = object(), object()
    r.add("Fashion_MNIST", a, "clothes", aliases=("fmnist",))
    assert r.names() == ["fashion-mnist"] and r.get(" FASHION-mnist") is a and r.get("FMNIST") is a
    assert "fmnist" in r and "mnist" not in r and r.canonical("fmnist") == "fashion-mnist"
    with pytest.raises(ConfigError, match="already registered"):
        r.add("fashion-mnist", b)
    r.add("fashion-mnist", b, replace=True)
    assert r.get("fmnist") is b
    r.remove("fmnist")
    assert r.names() == [] and "fmnist" not in r
    for bad in ("", "  ", None):
        with pytest.raises(ConfigError, match="non-empty name"):
            r.add(bad, a)
    with pytest.raises(ConfigError, match="'module:attribute'"):
        r.add("x", "no_colon_here", "lazy")
    with pytest.raises(ConfigError, match="needs a description"):
        r.add("x", "some.module:Name")


def test_scoped_and_copy_undo_and_isolate():
    r = Registry("thing")
    r.add("kept", 1, "one")
    with r.scoped():
        r.add("temporary", 2, "two")
        r.remove("kept")
        assert r.names() == ["temporary"]
    assert r.names() == ["kept"]
    c = r.copy()
    c.add("only-in-copy", 3, "three")
    assert r.names() == ["kept"] and c.names() == ["kept", "only-in-copy"]


@pytest.mark.parametrize("doc, line", [
    ("Plain cross-entropy.\n\n    More text.", "Plain cross-entropy."),
    ("CIFAR-10 from ``cifar-10-batches-py/``. Second sentence.", "CIFAR-10 from cifar-10-batches-py/."),
    ("Use e.g. this one. And then", "Use e.g. this one."),
    ("A long first\n    sentence over lines: lower case goes on. Next", "A long first sentence over lines: lower case "
                                                                        "goes on."),
    (None, ""),
])
def test_descriptions_from_docstrings_are_their_first_sentence(doc, line):
    assert first_sentence(doc) == line


# -- the registries in use ---------------------------------------------------------------------------------------------
def test_every_builtin_method_entry_names_a_method_class_of_that_name():
    for name, what in METHODS.describe():
        cls = METHODS.get(name)
        assert issubclass(cls, Method) and cls.name == name, name
        assert len(what.split()) >= 4, name
    assert METHODS.get("label_smoothing") is METHODS.get("ls")
    with pytest.raises(ConfigError, match=r"unknown method 'kee' \(did you mean ke\?\); allowed: adacos, .*"
                                          r"\(combine with '\+', e.g. ke\+ls\)"):
        METHODS.get("kee")


def test_every_registry_kind_describes_its_entries_and_keys_shows_them(capsys):
    from resprout.cli import main
    from resprout.data.sources import SOURCES
    from resprout.engine.loggers import LOGGERS
    from resprout.models.registry import MODELS
    from resprout.surgery.registry import SURGERY, get_surgery
    from resprout.surgery.resize import resize_op

    assert get_surgery("resize") is resize_op
    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    for prefix, registry in (("method", METHODS), ("model", MODELS), ("data", SOURCES), ("loggers", LOGGERS)):
        for name, what in registry.describe():
            assert what, f"{prefix}={name}"
            assert f"| {prefix}={name} " in out and what in out, f"{prefix}={name}"
    assert SURGERY.description("resize")


@pytest.mark.slow
def test_the_method_package_re_exports_every_name_of_its_type_checking_block_lazily(tmp_path):
    """The names come from the block, read here with ast; each is the object its module defines."""
    import importlib

    import resprout.methods as package

    tree = ast.parse(Path(package.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    names = {a.name: imp.module for imp in block.body for a in imp.names}
    assert len(names) >= 39
    for name, module in names.items():
        assert getattr(package, name) is getattr(importlib.import_module(module), name), name
        assert name in dir(package)
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        package.nothing_here  # noqa: B018
    code = "import sys, resprout.methods as m; print('torch' in sys.modules, m.available_methods()[:2])"
    out = subprocess.run([PYTHON, "-c", code], env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["False", "['adacos',", "'at']"], out.stderr


# -- method objects in the Python API ----------------------------------------------------------------------------------
@dataclasses.dataclass
class PenaltyOptions:
    weight: float = option(0.05, "weight of the squared-logit penalty", min=0.0)


class Penalty(Method):
    """A loss term of its own (so it changes the weights): weight * mean squared logit."""

    name = "test_registry_penalty"
    Options = PenaltyOptions

    def on_loss(self, trainer):
        trainer.add_loss("model", "penalty", self.options.weight * trainer.outputs["model"].pow(2).mean())


def _weights(trainer) -> dict:
    trainer.fit()
    return {k: v.clone() for k, v in trainer.members["model"].model.state_dict().items()}


def test_a_method_object_trains_exactly_like_the_same_class_registered_by_name():
    cfg = make_config(**synthetic(method="ls+test_registry_penalty", epochs=1))
    by_object = _weights(create_trainer(cfg, run_dir=None, run_id=None, store_path=None, methods=[Penalty]))
    assert "test_registry_penalty" not in METHODS  # nothing was registered
    register_method(Penalty)  # forgotten after this test (tests.conftest.scoped_registries)
    by_name = _weights(create_trainer(cfg, run_dir=None, run_id=None, store_path=None))
    plain = _weights(create_trainer(make_config(**synthetic(method="ls", epochs=1)), run_dir=None, run_id=None,
                                    store_path=None))
    assert by_object.keys() == by_name.keys()
    assert all(torch.equal(by_object[k], by_name[k]) for k in by_name)
    assert not all(torch.equal(plain[k], by_name[k]) for k in by_name)  # the penalty does change the weights


def test_methods_name_the_run_and_an_instance_brings_its_options(tmp_path):
    result = resprout.train(**synthetic(epochs=1), methods=[LabelSmoothing(smoothing=0.3), Penalty(weight=0.5)],
                            out=tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert result["method"] == info["config"]["method"] == "ls+test_registry_penalty"
    assert info["config"]["method_options"] == {"ls": {"smoothing": 0.3}, "test_registry_penalty": {"weight": 0.5}}
    # only the class resprout cannot rebuild by name is recorded: an instance of the registered ls is not
    assert info["method_objects"] == {"test_registry_penalty": "tests.test_registry:Penalty"}
    same = make_config(**synthetic(epochs=1, method="ls+test_registry_penalty",
                                   method_options={"ls": {"smoothing": 0.3}, "test_registry_penalty": {"weight": 0.5}}))
    assert info["fingerprint"] == same.fingerprint()  # the same run as naming the registered methods


@pytest.mark.parametrize("keys, methods, says", [
    ({}, [F.cross_entropy], "methods=[...] holds <function cross_entropy"),
    ({}, "ls", "methods must be a list"),
    ({}, [Penalty, Penalty(weight=1.0)], "two methods named 'test_registry_penalty'"),
    ({"method": "ce"}, [Penalty], "methods=[...] names test_registry_penalty, which method=ce does not"),
    ({"ls": {"smoothing": 0.2}}, [LabelSmoothing(smoothing=0.3)], "options ls.* {'smoothing': 0.2} differ"),
    ({}, [], "method cannot be empty"),
])
def test_bad_method_lists_are_one_line_and_write_nothing(tmp_path, keys, methods, says):
    with pytest.raises(ConfigError, match=re.escape(says)) as e:
        resprout.train(**synthetic(epochs=1, **keys), methods=methods, out=tmp_path / "run")
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


def test_a_run_of_method_objects_resumes_only_with_the_same_classes(tmp_path):
    class Stop(Penalty):
        """Stops the run (as SIGTERM would) after its first step, while ``armed``."""

        armed = True

        def on_batch_end(self, trainer):
            if Stop.armed:
                trainer.request_stop(15)

    keys = synthetic(epochs=1, method="ls+test_registry_penalty")
    with pytest.raises(Interrupted):
        resprout.train(**keys, methods=[Stop], out=tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"trained with method test_registry_penalty given as an object "
                                          r"\(tests.test_registry:.*Stop\); pass it again: resprout.resume"):
        resprout.resume(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"with tests.test_registry:.*Stop as method 'test_registry_penalty', "
                                          r"not tests.test_registry:Penalty"):
        resprout.resume(tmp_path / "run", methods=[Penalty])
    with pytest.raises(ConfigError, match="trained with the registered method 'ls', not tests.test_registry:"):
        resprout.resume(tmp_path / "run", methods=[Stop, type("MyLS", (LabelSmoothing,), {})])
    with pytest.raises(ConfigError, match="unknown method 'test_registry_penalty'"):
        resprout.train(**keys, out=tmp_path / "run")  # nor can train() continue it without the class
    assert path.read_bytes() == before  # a refused resume changes nothing
    Stop.armed = False
    assert resprout.resume(tmp_path / "run", methods=[Stop], progress="none")["status"] == "finished"


def test_bad_logger_names_are_refused_when_the_run_starts_before_anything_is_written(tmp_path):
    assert make_config(loggers="tensorbord").loggers == "tensorbord"  # the config leaves names to their owner
    with pytest.raises(ConfigError) as e:
        resprout.train(**synthetic(epochs=1), loggers="csv,tensorbord", out=tmp_path / "run")
    assert str(e.value) == ("bad value for loggers: tensorbord (allowed: a comma-separated list of csv, tensorboard, "
                            "or none; did you mean tensorboard?)")
    assert not (tmp_path / "run").exists()


def test_result_plots_are_drawn_by_analysis_from_the_results(tmp_path):
    from resprout.analysis.plots import write_result_plots
    from resprout.analysis.rejuvenation import UTILIZATION_PNG, WIDTHS_PNG

    write_result_plots({"final": {}}, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing to draw
    report = {"utilization": [{"epoch": 0.5, "r": 0.8}], "accuracy": [{"epoch": 1, "top1": 0.5}], "count": 1,
              "rejuvenations": [{"epoch": 0.5, "utilization_before": 0.8, "cost_before": 10, "cost_after": 10,
                                 "target": 10.0, "widths_before": {"a": 4}, "live_before": {"a": 3},
                                 "widths_after": {"a": 5}}]}
    results = {"rejuvenation": report}
    write_result_plots(results, tmp_path)
    assert report["plots"] == [UTILIZATION_PNG, WIDTHS_PNG]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([UTILIZATION_PNG, WIDTHS_PNG])
