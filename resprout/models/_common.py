"""Helpers shared by the built-in models: channel scaling, weight init and option checks."""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn

from resprout.errors import ConfigError


class OptionError(ConfigError):
    """A bad option value; :func:`resprout.models.build_model` prefixes the model name to the message."""


def scale_channels(channels: int, width: float) -> int:
    """Channels after applying the ``width`` multiplier: ``max(1, round(channels * width))``."""
    return max(1, int(round(channels * width)))


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) convs with zero bias, BN weight 1 / bias 0; linear layers keep torch's default."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def _is_number(value: object) -> bool:
    # bool is an int subclass, but width=True is a mistake, not a multiplier.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_width(value: object, name: str = "width") -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise OptionError(f"option '{name}' must be a number > 0; got {value!r}")
    return float(value)


def check_choice(value: object, name: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise OptionError(f"option '{name}' must be one of {allowed}; got {value!r}")
    return value  # type: ignore[return-value]


def check_int(value: object, name: str, *, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise OptionError(f"option '{name}' must be an integer >= {minimum}; got {value!r}")
    return value


def check_probability(value: object, name: str = "dropout") -> float:
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise OptionError(f"option '{name}' must be a number in [0, 1); got {value!r}")
    return float(value)


def check_depth_6n4(value: object, name: str = "depth") -> int:
    """Depths of the form 6n+4 (n >= 1) used by DenseNet-BC and WRN: 3 stages of n blocks with 2 convs each."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 10 or (value - 4) % 6 != 0:
        raise OptionError(f"option '{name}' must be an integer 6n+4 with n >= 1 (e.g. 16, 28, 40, 100); got {value!r}")
    return value
