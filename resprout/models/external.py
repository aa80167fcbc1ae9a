"""Models from torchvision (``tv:<name>``, and its detection zoo ``tv-det:<name>``) and timm (``timm:<name>``), built
untrained.

Both packages are optional; a failure to import either, of any kind, is one line (:func:`import_package`). Extra
options are passed to the external factory unchecked. After building, in-place activations are switched off (they
would overwrite features captured by forward hooks) and, for torchvision, the first conv is replaced when
``in_channels != 3`` (timm does that itself through ``in_chans``).

A detector (``tv-det:fasterrcnn_mobilenet_v3_large_fpn``, ``tv-det:fasterrcnn_resnet50_fpn``, ...) is built with
``weights=None`` and ``weights_backbone=None`` (nothing is downloaded; its backbone then trains with ordinary batch
norm, every layer trainable) and ``num_classes`` + 1 outputs (torchvision's label 0 is the background). Its options
(``min_size``, ``max_size``, ``box_detections_per_img``, ...) go to torchvision's builder, through ``model.<key>=``.
It takes 3-channel images (a detection set's loader repeats grayscale ones).
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from resprout.errors import ConfigError
from resprout.models._common import init_weights
from resprout.options import unknown_name

_PACKAGES = {"tv": "torchvision", "tv-det": "torchvision", "timm": "timm"}
DETECTOR_PREFIX = "tv-det:"


def is_detector(name: str) -> bool:
    """Whether the model name ``name`` is a detector of torchvision's detection zoo (``tv-det:<name>``)."""
    return isinstance(name, str) and name.startswith(DETECTOR_PREFIX)
# A plain `pip install torchvision` (or timm, which depends on it) picks the newest release, whose torch pin
# replaces the installed torch by another build (on x86_64 a CUDA build of several GB): the hint names the route.
INSTALL_HINT = ("install the torchvision (and timm) release built for this torch, with torch pinned in the same "
                "command (docs/usage.md, 'torchvision and timm models'): an unpinned install replaces torch by another build")


def import_package(prefix: str, what: str | None = None):
    """The module behind ``tv:`` / ``timm:`` models, or a one-line :class:`ConfigError` when it is missing or
    fails to import in any way (e.g. a torchvision whose compiled operators do not match this torch:
    ``operator torchvision::nms does not exist``)."""
    module = _PACKAGES[prefix]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name not in (module, None) and not module.startswith(str(e.name)):
            reason = f"fails to import (ModuleNotFoundError: {e})"
        else:
            reason = "is not installed"
    except Exception as e:  # noqa: BLE001  (any failure of a foreign package's import is one line)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        reason = f"fails to import ({type(e).__name__}{': ' + first if first else ''})"
    import torch

    what = what or f"{prefix}:<name> models"
    raise ConfigError(f"{what} need{'s' if what.startswith('model ') else ''} {module}, which {reason} beside "
                      f"torch {torch.__version__}; {INSTALL_HINT}") from None


def _import(name: str, prefix: str):
    return import_package(prefix, f"model {name!r}")


def _disable_inplace(model: nn.Module) -> None:
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first Conv2d that reads 3 channels by a freshly initialised one reading ``in_channels``."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            init_weights(new)
            parent_path, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, attr, new)
            return
    raise ConfigError(f"cannot adapt the model to in_channels={in_channels}: no Conv2d reading 3 channels found")


def build_external(name: str, *, in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    prefix, _, model_name = name.partition(":")
    if not model_name:
        raise ConfigError(f"model {name!r} needs a name after '{prefix}:', e.g. '{prefix}:resnet18'")
    package = _import(name, prefix)
    if prefix == "tv-det":
        return _build_detector(package, name, model_name, in_channels=in_channels, num_classes=num_classes, **options)
    try:
        if prefix == "tv":
            model = package.models.get_model(model_name, weights=None, num_classes=num_classes, **options)
        else:
            model = package.create_model(
                model_name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options
            )
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot build model {name!r}: {message}") from None
    if prefix == "tv" and in_channels != 3:
        _adapt_first_conv(model, in_channels)
    _disable_inplace(model)
    return model


def _build_detector(torchvision, name: str, model_name: str, *, in_channels: int, num_classes: int,
                    **options: Any) -> nn.Module:
    """A torchvision detector, untrained, with ``num_classes`` object classes (+ the background)."""
    if in_channels != 3:
        raise ConfigError(f"model {name!r} takes 3-channel images; got in_channels={in_channels}")
    for key in ("weights", "weights_backbone", "num_classes"):
        if key in options:
            raise ConfigError(f"model {name!r}: {key} is set by resprout (weights=None, weights_backbone=None, "
                              f"num_classes = the data's classes + 1); leave model.{key} out")
    detection = torchvision.models.detection
    known = sorted(torchvision.models.list_models(detection))
    if model_name not in known:
        raise ConfigError(f"unknown torchvision detector {model_name!r}; known: {', '.join(known)}")
    if model_name.startswith(("maskrcnn", "keypointrcnn")):
        raise ConfigError(f"model {name!r} trains on masks or keypoints, which a detection set here does not have "
                          f"(boxes and labels only): use a box detector, e.g. tv-det:fasterrcnn_resnet50_fpn")
    builder = torchvision.models.get_model_builder(model_name)
    try:
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes + 1, **options)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot build model {name!r}: {message}") from None
    _check_detector_options(builder, model, name, options)
    _disable_inplace(model)
    return model


def _check_detector_options(builder, model: nn.Module, name: str, options: dict) -> None:
    """Refuse an option neither the builder nor the detector's class takes: torchvision hands unknown keywords down
    to its image transform, which ignores them (``model.min_sise=64`` would be silently dropped)."""
    import inspect

    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    inits = [c.__dict__["__init__"] for c in type(model).__mro__ if "__init__" in c.__dict__ and c is not object]
    allowed = {n for fn in (builder, *inits) for n, p in inspect.signature(fn).parameters.items()
               if p.kind in kinds and n != "self"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise unknown_name(repr(unknown[0]), sorted(allowed - {"weights", "weights_backbone", "num_classes"}),
                           where=f"model {name!r}")
