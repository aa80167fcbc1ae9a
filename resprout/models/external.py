"""Models from torchvision (``tv:<name>``) and timm (``timm:<name>``), built untrained.

Both packages are optional. Extra options are passed to the external factory unchecked. After building, in-place
activations are switched off (they would overwrite features captured by forward hooks) and, for torchvision, the
first conv is replaced when ``in_channels != 3`` (timm does that itself through ``in_chans``).
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from resprout.errors import ConfigError
from resprout.models._common import init_weights

_PACKAGES = {"tv": ("torchvision", "torchvision"), "timm": ("timm", "timm")}


def _import(name: str, prefix: str):
    module, extra = _PACKAGES[prefix]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"model {name!r} needs {module}, which is not installed; install it with: pip install 'resprout[{extra}]'"
        ) from None


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
