"""The shared option validator (resprout.options) and its users: config, models, data sources, prepare()."""

from __future__ import annotations

import ast
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from torch import nn

import resprout.config
from resprout import options
from resprout.config import make_config
from resprout.data import load_source, prepare, register_source
from resprout.data import sources
from resprout.errors import ConfigError
from resprout.models import build_model, model_options, register_model, registry
from resprout.options import Spec, check_options, check_range, coerce, describe, fill_options, option, validate


def message(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text
    return text


# -- finite numbers -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "NaN", float("nan"), "inf", "-inf", float("inf"), "1e999"])
def test_floats_must_be_finite(value):
    number = float(value)
    expected = f"bad value for lr: {number!r} (expected a finite number)"
    assert message(lambda: coerce("lr", value, float)) == expected
    assert message(lambda: coerce("lr", value, float, strict=not isinstance(value, str))) == expected


def test_config_refuses_nan_and_infinity():
    assert message(lambda: make_config(lr="nan")) == "bad value for lr: nan (expected a finite number)"
    assert message(lambda: make_config({"lr": float("inf")})) == "bad value for lr: inf (expected a finite number)"
    assert message(lambda: make_config(momentum="nan")) == "bad value for momentum: nan (expected a finite number)"
    assert "finite" in message(lambda: make_config(milestones="3,nan", epochs=10))
    assert make_config(lr="0.05").lr == 0.05


def test_options_dataclass_refuses_nan():
    @dataclass
    class Opts:
        smoothing: float = option(0.1, "weight", min=0.0, max=1.0)

    assert message(lambda: fill_options(Opts, {"smoothing": "nan"}, prefix="ls")) == (
        "bad value for ls.smoothing: nan (expected a finite number)")
    assert fill_options(Opts, {"smoothing": "0.2"}, prefix="ls").smoothing == 0.2


def test_models_and_sources_refuse_nan():
    assert "'width' must be a number > 0; got nan" in message(
        lambda: build_model("cnn", in_channels=1, num_classes=10, width=float("nan")))
    assert "val_split" in message(lambda: prepare(load_source("synthetic", n_train=20, n_test=10), val_split=math.nan))


# -- lenient and strict conversion ----------------------------------------------------------------------------------
def test_lenient_conversion_of_command_line_strings():
    assert coerce("epochs", "3", int) == 3 and coerce("epochs", 3.0, int) == 3
    assert coerce("lr", "0.5", float) == 0.5
    assert coerce("nesterov", "yes", bool) is True
    assert coerce("threads", "none", int, allow_none=True) is None
    assert coerce("milestones", "5,8", list) == [5, 8]
    assert message(lambda: coerce("epochs", "three", int)) == "bad value for epochs: 'three' (expected an integer)"
    assert message(lambda: coerce("epochs", 2.5, int)) == "bad value for epochs: 2.5 (expected an integer)"
    assert message(lambda: coerce("epochs", None, int)) == "epochs cannot be empty"


def test_strict_conversion_of_python_values():
    assert coerce("n", np.int64(4), int, strict=True) == 4 and type(coerce("n", np.int64(4), int, strict=True)) is int
    assert coerce("x", 2, float, strict=True) == 2.0
    assert coerce("x", np.float32(0.5), float, strict=True) == 0.5
    for value, tp in [("3", int), (3.0, int), (True, int), ("0.5", float), (False, float), (3, str), ("yes", bool),
                      ("a,b", list)]:
        with pytest.raises(ConfigError, match="bad value for k"):
            coerce("k", value, tp, strict=True)
    # "none" is a string, not None, when the value comes from Python
    assert message(lambda: coerce("k", "none", int, allow_none=True, strict=True)) == (
        "bad value for k: 'none' (expected an integer)")


# -- ranges, choices, specs -----------------------------------------------------------------------------------------
def test_check_range_messages():
    check_range("x", None, {"min": 1})
    assert message(lambda: check_range("epochs", 0, {"min": 1})) == "bad value for epochs: 0 (must be >= 1)"
    assert message(lambda: check_range("lr", 0.0, {"min": 0.0, "min_exclusive": True})) == (
        "bad value for lr: 0.0 (must be > 0.0)")
    assert message(lambda: check_range("m", 2, {"max": 1})) == "bad value for m: 2 (must be <= 1)"
    assert message(lambda: check_range("v", 1.0, Spec(float, max=1.0, max_exclusive=True))) == (
        "bad value for v: 1.0 (must be < 1.0)")
    assert message(lambda: check_range("optimizer", "lion", {"choices": ("sgd", "adam")})) == (
        "bad value for optimizer: 'lion' (allowed: sgd, adam)")


def test_validate_and_describe():
    assert validate("k", "4", Spec(int, min=1)) == 4
    assert validate("k", None, Spec(int, min=1, allow_none=True)) is None
    assert validate("k", "anything", Spec()) == "anything"
    assert message(lambda: validate("labels", "medium", Spec(str, choices=("fine", "coarse")),
                                    where="data source 'cifar100'")) == (
        "data source 'cifar100': bad value for labels: 'medium' (allowed: fine, coarse)")
    assert describe(Spec(int, min=1)) == "an integer >= 1"
    assert describe(Spec(float, min=0, min_exclusive=True)) == "a number > 0"
    assert describe(Spec(float, min=0, max=1, max_exclusive=True)) == "a number in [0, 1)"
    assert describe(Spec(str, choices=("fc", "gap"))) == "one of 'fc', 'gap'"
    assert describe(Spec(int, max=9, max_exclusive=True)) == "an integer < 9"


def test_check_options():
    specs = {"k": Spec(int, min=2), "name": Spec(str)}
    assert check_options({"k": 3}, specs) == {"k": 3}
    assert check_options({"free": [1]}, specs, allowed=["k", "free"]) == {"free": [1]}
    assert message(lambda: check_options({"kk": 3}, specs, where="thing 'x'")) == (
        "thing 'x': unknown option 'kk'; allowed: k, name")
    assert message(lambda: check_options({"k": 1}, specs)) == "bad value for k: 1 (must be >= 2)"
    assert message(lambda: check_options({"a": 1}, {})) == "unknown option 'a'; allowed: none"


def test_fill_options_names_unknown_options():
    @dataclass
    class Opts:
        k: int = option(5, "images per class", min=2)
        mode: str = option("a", "mode", choices=("a", "b"))

    assert fill_options(Opts, {"k": "7"}, prefix="metric").k == 7
    assert message(lambda: fill_options(Opts, {"kk": 1}, prefix="metric")) == (
        "unknown option metric.kk; allowed: metric.k, metric.mode")
    assert message(lambda: fill_options(Opts, {"kk": 1}, prefix=None)) == "unknown key kk; allowed: k, mode"
    assert message(lambda: fill_options(Opts, {"mode": "c"}, prefix="metric")) == (
        "bad value for metric.mode: 'c' (allowed: a, b)")


# -- one validator for everything -----------------------------------------------------------------------------------
def test_config_reexports_the_validator():
    for name in ("option", "coerce", "check_range", "fill_options", "parse_scalar"):
        assert getattr(resprout.config, name) is getattr(options, name), name


def test_options_imports_only_stdlib_and_errors():
    tree = ast.parse(Path(options.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module if node.module.startswith("resprout") else node.module.split(".")[0])
    outside = {m for m in imported if m not in sys.stdlib_module_names and m != "__future__"}
    assert outside == {"resprout.errors"}, outside


def test_source_options_are_declared_with_specs():
    @register_source("sized", options={"size": Spec(int, min=1), "mode": Spec(str, choices=("a", "b"))})
    def sized(*, size=4, mode="a", extra=None):
        return load_source("synthetic", num_classes=2, n_train=2, n_test=2, image_size=max(2, size))

    assert load_source("sized", size=np.int64(6)).input_shape == (1, 6, 6)
    assert load_source("sized", extra="anything").input_shape == (1, 4, 4)  # undeclared options pass unchecked
    assert message(lambda: load_source("sized", size=0)) == "data source 'sized': bad value for size: 0 (must be >= 1)"
    assert message(lambda: load_source("sized", size="6")) == (
        "data source 'sized': bad value for size: '6' (expected an integer)")
    assert message(lambda: load_source("sized", mode="c")) == (
        "data source 'sized': bad value for mode: 'c' (allowed: a, b)")
    assert message(lambda: load_source("sized", colour=1)) == (
        "data source 'sized': unknown option 'colour'; allowed: size, mode, extra")
    with pytest.raises(ValueError, match="not a keyword parameter"):
        register_source("broken", options={"nope": Spec(int)})(lambda *, size=1: None)


def test_builtin_source_messages():
    assert message(lambda: load_source("synthetic", n_test=0)) == (
        "data source 'synthetic': bad value for n_test: 0 (must be >= 1)")
    assert message(lambda: load_source("synthetic", num_classes=5, n_train=3)) == (
        "data source 'synthetic': bad value for n_train: 3 (must be >= num_classes=5)")
    assert message(lambda: load_source("synthetic", channels=True)) == (
        "data source 'synthetic': bad value for channels: True (expected an integer)")
    ds = load_source("synthetic", n_train=20, n_test=10)
    assert message(lambda: prepare(ds, per_class=0)) == "bad value for per_class: 0 (must be >= 1)"
    assert message(lambda: prepare(ds, fit="crop")) == "bad value for fit: 'crop' (allowed: auto, pad, resize)"
    assert message(lambda: prepare(ds, val_split=1.0)) == "bad value for val_split: 1.0 (must be < 1.0)"


def test_model_options_declared_with_specs(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("tiny-spec", options={"hidden": Spec(int, default=8, min=1), "act": "relu"})
    def build(*, in_channels, num_classes, hidden, act):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    assert model_options("tiny-spec") == {"hidden": 8, "act": "relu"}
    assert build_model("tiny-spec", in_channels=1, num_classes=3)[3].in_features == 8
    assert build_model("tiny-spec", in_channels=1, num_classes=3, hidden=np.int64(5))[3].in_features == 5
    assert message(lambda: build_model("tiny-spec", in_channels=1, num_classes=3, hidden=0)) == (
        "model 'tiny-spec': option 'hidden' must be an integer >= 1; got 0")
    assert message(lambda: build_model("tiny-spec", in_channels=1, num_classes=3, depth=2)) == (
        "model 'tiny-spec': unknown option 'depth'; allowed: act, hidden")
