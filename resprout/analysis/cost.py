"""``resprout profile``: parameters and multiply-accumulates of a model for an input size."""

from __future__ import annotations

from dataclasses import dataclass

from resprout.analysis.tables import format_table
from resprout.config import fill_options, option, parse_scalar, split_pairs
from resprout.errors import ConfigError
from resprout.models import build_model
from resprout.surgery.profile import CATEGORIES, profile_model


@dataclass
class ProfileKeys:
    model: str = option("cnn", "architecture")
    input: str = option("3x32x32", "input size CxHxW")
    classes: int = option(10, "number of classes", min=1)
    width: float | None = option(None, "channel width multiplier")
    stem: str | None = option(None, "ResNet stem", choices=("cifar", "imagenet"))


def parse_input(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"bad value for input: {text!r} (expected CxHxW, e.g. 3x32x32)")
    return shape  # type: ignore[return-value]


def profile_command(args: list[str]) -> tuple[dict, str]:
    """(JSON-ready result, text table) for ``resprout profile key=value ...``."""
    raw = split_pairs(args)
    model_options = {k[6:]: parse_scalar(v) for k, v in raw.items() if k.startswith("model.")}
    raw = {k: v for k, v in raw.items() if not k.startswith("model.")}
    keys = fill_options(ProfileKeys, raw, prefix=None)
    shape = parse_input(keys.input)
    opts = dict(model_options)
    if keys.width is not None:
        opts["width"] = keys.width
    if keys.stem is not None:
        opts["stem"] = keys.stem
    model = build_model(keys.model, in_channels=shape[0], num_classes=keys.classes, **opts)
    prof = profile_model(model, shape)
    result = {"model": keys.model, "input": list(shape), "classes": keys.classes, "params": prof.params,
              "trainable_params": prof.trainable_params, "macs": prof.macs,
              "by_type": {k: prof.by_type.get(k, 0) for k in CATEGORIES}}
    rows = [[k, f"{prof.by_type.get(k, 0):,}"] for k in CATEGORIES if prof.by_type.get(k, 0)]
    text = (f"{keys.model} on {keys.input}, {keys.classes} classes: {prof.params:,} parameters, "
            f"{prof.macs:,} MACs ({prof.macs / 1e6:.2f} M)\n" + format_table(["layer type", "MACs"], rows))
    return result, text
