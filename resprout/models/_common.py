"""Helpers shared by the built-in models: channel scaling, weight init and option checks.

The option checks run the shared validator of :mod:`resprout.options` (strictly: no parsing from strings, a bool is
not a number) and word a bad value the way model errors read: ``option 'width' must be a number > 0; got 0``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from resprout.errors import ConfigError
from resprout.options import Spec, describe, validate


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


def check_option(value: object, name: str, spec: Spec, expected: str | None = None) -> Any:
    """``value`` checked against ``spec`` by the shared validator; a bad one is an :class:`OptionError`
    ``option '<name>' must be <expected>; got <value>`` (``expected`` defaults to what ``spec`` allows)."""
    try:
        return validate(name, value, spec, strict=True)
    except ConfigError:
        raise OptionError(f"option '{name}' must be {expected or describe(spec)}; got {value!r}") from None


_WIDTH = Spec(float, min=0, min_exclusive=True)
_PROBABILITY = Spec(float, min=0, max=1, max_exclusive=True)
_DEPTH_6N4 = "an integer 6n+4 with n >= 1 (e.g. 16, 28, 40, 100)"


def check_width(value: object, name: str = "width") -> float:
    return check_option(value, name, _WIDTH)


def check_choice(value: object, name: str, choices: Iterable[str]) -> str:
    return check_option(value, name, Spec(choices=tuple(choices)))


def check_int(value: object, name: str, *, minimum: int = 1) -> int:
    return check_option(value, name, Spec(int, min=minimum))


def check_probability(value: object, name: str = "dropout") -> float:
    return check_option(value, name, _PROBABILITY)


def check_depth_6n4(value: object, name: str = "depth") -> int:
    """Depths of the form 6n+4 (n >= 1) used by DenseNet-BC and WRN: 3 stages of n blocks with 2 convs each."""
    depth = check_option(value, name, Spec(int, min=10), _DEPTH_6N4)
    if (depth - 4) % 6 != 0:
        raise OptionError(f"option '{name}' must be {_DEPTH_6N4}; got {value!r}")
    return depth
