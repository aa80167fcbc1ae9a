"""One validator for every option resprout takes: run-config keys, method options, model and data-source options.

An option is described by a :class:`Spec` (its type, choices, range and whether ``None`` is allowed), or, for the
config and the options dataclasses of methods, by the same metadata on a dataclass field (:func:`option`).

* :func:`coerce` converts a value to the option's type;
* :func:`check_range` checks it against the choices and the range;
* :func:`validate` does both for one value, :func:`check_options` for a dict of options (unknown names included),
  :func:`fill_options` fills an options dataclass.

Every failure is a :class:`~resprout.errors.ConfigError` with a one-line message::

    bad value for epochs: 'three' (expected an integer)
    bad value for optimizer: 'lion' (allowed: sgd, adam)
    bad value for epochs: 0 (must be >= 1)
    unknown option 'n_trian'; allowed: num_classes, n_train, ...

Values typed on the command line arrive as strings and are converted leniently (``"3"`` is 3, ``"none"`` is None).
Options passed from Python (models, data sources, :func:`resprout.data.prepare`) are checked with ``strict=True``:
nothing is parsed from a string, a bool is not a number and a float is not an int. Numbers must be finite either way.

This module imports only the standard library and :mod:`resprout.errors`, so anything can use it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from resprout.errors import ConfigError

__all__ = [
    "SCOPES",
    "Spec",
    "base_type",
    "check_options",
    "check_range",
    "coerce",
    "dataclass_specs",
    "describe",
    "fill_options",
    "option",
    "parse_scalar",
    "unknown_name",
    "validate",
]

# What each type is called in "expected ..." messages.
# Integers must fit in a signed 64-bit integer: torch, numpy and the results store (SQLite) take no more.
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1

_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a comma-separated list", dict: "a table"}


@dataclass(frozen=True)
class Spec:
    """What one option accepts. ``type`` None accepts any type (then only ``choices`` and the range are checked);
    the range is ``min <= value <= max``, either end exclusive on request. ``default`` is what the option is when
    it is not given (used by :func:`resprout.models.register_model`; data sources keep their defaults in their
    signature)."""

    type: type | None = None
    default: Any = None
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    allow_none: bool = False
    help: str = ""

    def __post_init__(self) -> None:
        if self.choices is not None and not isinstance(self.choices, tuple):
            object.__setattr__(self, "choices", tuple(self.choices))

    def meta(self) -> dict:
        """The range and choices as the metadata dict :func:`check_range` reads (the form of dataclass fields)."""
        return {"help": self.help, "choices": self.choices, "min": self.min, "max": self.max,
                "min_exclusive": self.min_exclusive, "max_exclusive": self.max_exclusive}


#: What an option's ``scope`` may say about it (a run-config key may carry several):
#: ``runtime``: where and how a run is shown, not what it computes (outside its identity; a resume may change it);
#: ``resumable``: a resume may change it (recorded in ``run.json``'s ``config_history``);
#: ``optimizer`` / ``schedule``: an optimizer or learning-rate-schedule key, which one member may set for itself
#: (``member.<name>.<key>``);
#: ``auto``: its ``auto`` resolves on the machine that starts the run, which stores the resolved value.
SCOPES = ("runtime", "resumable", "optimizer", "schedule", "auto")


def option(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
           max: float | None = None, min_exclusive: bool = False, scope: str | tuple[str, ...] = ()) -> Any:
    """A dataclass field carrying the metadata :func:`check_range` reads (for the config and options dataclasses),
    and its ``scope`` (one or several of :data:`SCOPES`)."""
    scopes = (scope,) if isinstance(scope, str) else tuple(scope)
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:  # a programming error in a dataclass definition, caught at import
        raise ValueError(f"unknown option scope {unknown[0]!r}; allowed: {', '.join(SCOPES)}")
    meta = {"help": help, "choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive,
            "scope": scopes}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# -- one value ------------------------------------------------------------------------------------------------------
def parse_scalar(text: str) -> Any:
    """Turn an untyped ``key=value`` string into a Python value (for open-ended option families)."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if "," in text:
        return [parse_scalar(t) for t in text.split(",") if t.strip()]
    return text


def coerce(key: str, value: Any, tp: Any, *, allow_none: bool = False, strict: bool = False) -> Any:
    """Convert ``value`` (a string from the command line, or a TOML/YAML value) to type ``tp``, or raise.

    With ``strict=True`` (values from Python code) nothing is parsed from a string and numbers keep their kind: an
    int option takes an integral number, not a float or a bool. Floats must be finite in both modes.
    """
    none_text = not strict and isinstance(value, str) and value.strip().lower() in ("none", "null")
    if value is None or (allow_none and none_text):
        if allow_none:
            return None
        raise ConfigError(f"{key} cannot be empty")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            low = "" if strict else str(value).strip().lower()
            if low in ("true", "yes", "on", "1"):
                return True
            if low in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if tp is int:
            if strict:
                if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                    raise ValueError
                return _int64(key, int(value))
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return _int64(key, int(value) if not isinstance(value, str) else int(value.strip()))
        if tp is float:
            if isinstance(value, bool) or (strict and not isinstance(value, numbers.Real)):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"bad value for {key}: {number!r} (expected a finite number)")
            return number
        if tp is str:
            if not isinstance(value, str if strict else (str, int, float)):
                raise ValueError
            return str(value)
        if tp is list:
            if isinstance(value, str) and not strict:
                return [parse_scalar(v) for v in value.split(",") if v.strip()]
            if isinstance(value, (list, tuple)):
                return list(value)
            if strict:
                raise ValueError
            return [value]
        if tp is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError, OverflowError):
        pass
    raise ConfigError(f"bad value for {key}: {value!r} (expected {_EXPECTED.get(tp, getattr(tp, '__name__', tp))})")


def _int64(key: str, number: int) -> int:
    """``number`` if it fits in a signed 64-bit integer, else a one-line ConfigError."""
    if INT_MIN <= number <= INT_MAX:
        return number
    digits = len(str(abs(number)))
    shown = f"{float(number):g}" if digits < 300 else f"a {digits}-digit integer"
    bound = "must be < 2**63" if number > 0 else "must be >= -2**63"
    raise ConfigError(f"bad value for {key}: {shown} ({bound})")


def check_range(key: str, value: Any, meta: Mapping | Spec) -> None:
    """Check ``value`` against the ``choices`` and the ``min``/``max`` of ``meta`` (a :class:`Spec` or the metadata
    of a dataclass field made by :func:`option`); None is always in range."""
    if isinstance(meta, Spec):
        meta = meta.meta()
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(str(c) for c in choices)
        raise ConfigError(f"bad value for {key}: {value!r} (allowed: {allowed})")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
        op = ">" if meta.get("min_exclusive") else ">="
        raise ConfigError(f"bad value for {key}: {value!r} (must be {op} {lo})")
    if hi is not None and (value > hi or (meta.get("max_exclusive") and value == hi)):
        op = "<" if meta.get("max_exclusive") else "<="
        raise ConfigError(f"bad value for {key}: {value!r} (must be {op} {hi})")


def validate(key: str, value: Any, spec: Spec, *, strict: bool = False, where: str | None = None) -> Any:
    """``value`` converted to ``spec.type`` and checked against its choices and range; ``where`` (e.g.
    ``"data source 'cifar100'"``) prefixes the error message."""
    try:
        v = value if spec.type is None else coerce(key, value, spec.type, allow_none=spec.allow_none, strict=strict)
        check_range(key, v, spec)
    except ConfigError as e:
        if where is None:
            raise
        raise ConfigError(f"{where}: {e}") from None
    return v


def describe(spec: Spec) -> str:
    """What ``spec`` allows, as a phrase: ``an integer >= 1``, ``a number in [0, 1)``, ``one of 'a', 'b'``."""
    if spec.choices is not None:
        return "one of " + ", ".join(repr(c) for c in spec.choices)
    noun = _EXPECTED.get(spec.type, "a value") if spec.type is not None else "a value"
    lo, hi = spec.min, spec.max
    if lo is not None and hi is not None:
        left, right = "(" if spec.min_exclusive else "[", ")" if spec.max_exclusive else "]"
        return f"{noun} in {left}{lo}, {hi}{right}"
    if lo is not None:
        return f"{noun} {'>' if spec.min_exclusive else '>='} {lo}"
    if hi is not None:
        return f"{noun} {'<' if spec.max_exclusive else '<='} {hi}"
    return noun


# -- a set of options -----------------------------------------------------------------------------------------------
def unknown_name(name: str, allowed: Iterable[str], *, kind: str = "option", where: str | None = None) -> ConfigError:
    """The error for an option (or key) nobody takes: ``unknown option <name>; allowed: a, b``. ``name`` is shown
    as given (quote it with ``repr`` if wanted)."""
    message = f"unknown {kind} {name}; allowed: {', '.join(allowed) or 'none'}"
    return ConfigError(f"{where}: {message}" if where else message)


def check_options(values: Mapping[str, Any], specs: Mapping[str, Spec], *, allowed: Iterable[str] | None = None,
                  strict: bool = True, where: str | None = None) -> dict:
    """Validate a dict of options: every name must be ``allowed`` (by default, the names of ``specs``) and every
    value that has a spec is converted and checked (:func:`validate`). Returns the validated options; options
    without a spec are passed through as given. The first unknown name (in the order given) is the error."""
    names = list(specs) if allowed is None else list(allowed)
    out = {}
    for key, value in values.items():
        if key not in names:
            raise unknown_name(repr(key), names, where=where)
        out[key] = validate(key, value, specs[key], strict=strict, where=where) if key in specs else value
    return out


def base_type(tp: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) of a field annotation like ``int | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def dataclass_specs(cls: type) -> dict[str, Spec]:
    """The :class:`Spec` of every field of an options dataclass (type from its annotation, the rest from the
    metadata :func:`option` puts on the field)."""
    hints = typing.get_type_hints(cls)
    specs = {}
    for f in dataclasses.fields(cls):
        tp, allow_none = base_type(hints[f.name])
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else None
        specs[f.name] = Spec(tp, default=default, choices=meta.get("choices"), min=meta.get("min"),
                             max=meta.get("max"), min_exclusive=bool(meta.get("min_exclusive")),
                             max_exclusive=bool(meta.get("max_exclusive")), allow_none=allow_none,
                             help=meta.get("help", ""))
    return specs


def fill_options(cls: type, values: dict, *, prefix: str | None) -> Any:
    """Fill an options dataclass (of a method, say) from raw values, validating names, types and ranges.

    Fields may carry the same metadata as :class:`~resprout.config.Config` fields (``choices``, ``min``, ``max``).
    """
    specs = dataclass_specs(cls)
    full = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: k)
    typed = {}
    for key, value in values.items():
        if key not in specs:
            raise unknown_name(full(key), [full(k) for k in specs], kind="option" if prefix else "key")
        typed[key] = validate(full(key), value, specs[key])
    return cls(**typed)
