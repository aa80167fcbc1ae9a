"""The model registry behind :func:`resprout.models.build_model`.

A model is registered under a name together with the options it accepts and their defaults. ``build_model`` checks
the options, fills in the defaults and calls the builder as ``builder(in_channels=..., num_classes=..., **options)``.
Option names are checked here; values by the builder (the checks of :mod:`resprout.models._common`), or here when the
option is declared with a :class:`~resprout.options.Spec`. Both use the shared validator of :mod:`resprout.options`.
Names of the form ``tv:<name>`` and ``timm:<name>`` are not registered; they are built by
:mod:`resprout.models.external`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from torch import nn

from resprout.errors import ConfigError
from resprout.models._common import OptionError, check_option
from resprout.options import Spec, unknown_name, validate
from resprout.registry import Registry, first_sentence

Builder = Callable[..., nn.Module]
_EXTERNAL_PREFIXES = ("tv:", "tv-det:", "timm:")


class ModelEntry(NamedTuple):
    builder: Builder
    defaults: dict[str, Any]  # every option the builder takes, with its default
    specs: dict[str, Spec]  # the options declared with a Spec (checked before the builder runs)


MODELS: Registry[ModelEntry] = Registry("model", also_allowed=("tv:<name>", "timm:<name>"))


def register_model(name: str, *, options: Mapping[str, Any], description: str | None = None
                   ) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(*, in_channels, num_classes, **options) -> nn.Module`` under ``name``.

    ``options`` maps every option the builder accepts to its default, or to a :class:`~resprout.options.Spec`
    (with its ``default``) whose type, choices and range :func:`build_model` then checks before calling the
    builder. ``description`` (default: the builder's docstring) is the one line ``resprout keys`` shows. The
    builder is returned unchanged, so one function can be registered under several names by stacking decorators.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise ConfigError(f"model name must be a non-empty string without surrounding spaces; got {name!r}")
    if ":" in name:
        # "tv:" and "timm:" are reserved for external models; keep every registered name free of the separator.
        raise ConfigError(f"model name {name!r} must not contain ':' (reserved for tv:<name> and timm:<name>)")
    if name in MODELS:
        raise ConfigError(f"model '{name}' is already registered")
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise ConfigError(f"options of model '{name}' must be a dict of option name -> default")
    specs = {k: v for k, v in options.items() if isinstance(v, Spec)}
    defaults = {k: v.default if isinstance(v, Spec) else v for k, v in options.items()}

    def decorator(builder: Builder) -> Builder:
        if not callable(builder):
            raise ConfigError(f"model '{name}' must be registered on a callable; got {builder!r}")
        MODELS.add(name, ModelEntry(builder, defaults, specs),
                   description if description is not None else first_sentence(builder.__doc__))
        return builder

    return decorator


def available_models() -> list[str]:
    """Sorted names of all registered models (external ``tv:``/``timm:`` names are not listed)."""
    return MODELS.names()


def model_options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts, with their defaults (a copy).

    External ``tv:``/``tv-det:``/``timm:`` models return ``{}``: their options are passed to the external factory unchecked.
    """
    if isinstance(name, str) and name.startswith(_EXTERNAL_PREFIXES):
        return {}
    return dict(MODELS.get(name).defaults)


def _check_positive_int(value: object, what: str) -> int:
    try:
        return validate(what, value, Spec(int, min=1), strict=True)
    except ConfigError:
        raise ConfigError(f"{what} must be an integer >= 1; got {value!r}") from None


def build_model(name: str, *, in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    """Build a freshly initialised model by name.

    Raises :class:`~resprout.errors.ConfigError` for an unknown name, an unknown option or a bad option value.
    """
    _check_positive_int(in_channels, "in_channels")
    _check_positive_int(num_classes, "num_classes")
    if isinstance(name, str) and name.startswith(_EXTERNAL_PREFIXES):
        from resprout.models.external import build_external

        return build_external(name, in_channels=in_channels, num_classes=num_classes, **options)
    builder, defaults, specs = MODELS.get(name)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise unknown_name(repr(unknown[0]), sorted(defaults), where=f"model '{name}'")
    resolved = {**defaults, **options}
    try:
        for key, spec in specs.items():
            resolved[key] = check_option(resolved[key], key, spec)
        return builder(in_channels=in_channels, num_classes=num_classes, **resolved)
    except OptionError as exc:
        raise ConfigError(f"model '{name}': {exc}") from None
