"""Parameter and multiply-accumulate (MAC) counts of a model, measured by running it once.

:func:`profile_model` runs one forward pass with a batch of 1 in eval mode under ``torch.no_grad``, with a forward
hook on every leaf module (and on every module of a counted type, so e.g. a parametrized conv is still counted).
The model's train/eval flags are restored and the hooks removed afterwards, also when the forward fails.

MAC rules (one multiply-add = 1 MAC; bias additions are not counted):

* conv (``Conv1d/2d/3d``, grouped and depthwise included):
  ``output elements * (in_channels / groups) * prod(kernel_size)``;
  transposed conv (``ConvTranspose1d/2d/3d``): ``input elements * (out_channels / groups) * prod(kernel_size)``.
* linear (``Linear``): ``out_features * in_features * rows``, where ``rows = input.numel() / in_features``.
* bn (``BatchNorm*``, ``SyncBatchNorm``, ``GroupNorm``, ``LayerNorm``, ``InstanceNorm*``): one multiply-add per
  output element (the eval-mode affine transform).
* pool (``MaxPool*``, ``AvgPool*``, ``LPPool*``): ``output elements * kernel elements``; adaptive pooling
  (``AdaptiveAvgPool*``, ``AdaptiveMaxPool*``): input elements.
* other: every other leaf module (activations, dropout, flatten, identity, ...) is listed in ``layers`` with 0 MACs.
  Operations done in ``forward`` outside modules (residual adds, ``torch.cat``, ``torch.flatten``) are not seen.

A module called twice in one forward counts twice (and appears twice in ``layers``). ``params`` counts every
parameter tensor once, even if shared between modules.

The hooks and helpers (:func:`_hooked_forward`, :func:`_hooked_modules`, ...) are generic; paper-specific counting
conventions live with their method (the Knowledge Evolution paper's Table 5 convention is
:mod:`resprout.methods.evolution.cost`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from resprout.errors import ConfigError

__all__ = [
    "CATEGORIES",
    "LayerCost",
    "ModelProfile",
    "profile_model",
]

CATEGORIES = ("conv", "linear", "bn", "pool", "other")

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
# Pool class -> number of spatial dims (an int kernel_size means that many equal sides).
_POOL_DIMS = {
    nn.MaxPool1d: 1,
    nn.MaxPool2d: 2,
    nn.MaxPool3d: 3,
    nn.AvgPool1d: 1,
    nn.AvgPool2d: 2,
    nn.AvgPool3d: 3,
    nn.LPPool1d: 1,
    nn.LPPool2d: 2,
}
_POOL = tuple(_POOL_DIMS)
_ADAPTIVE_POOL = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_COUNTED = _CONV + _CONV_T + (nn.Linear,) + _NORM + _POOL + _ADAPTIVE_POOL


@dataclass(frozen=True)
class LayerCost:
    """One call of one module: its path in the model, class name, category, MACs, own parameters, output shape."""

    name: str
    type: str
    category: str
    macs: int
    params: int
    output_shape: tuple[int, ...] | None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_shape"] = None if self.output_shape is None else list(self.output_shape)
        return d


@dataclass
class ModelProfile:
    """Counts for one model at one input shape (batch size 1). ``by_type`` has a key for every category."""

    params: int
    trainable_params: int
    macs: int
    by_type: dict[str, int]
    layers: list[LayerCost] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (lists instead of tuples)."""
        return {
            "params": self.params,
            "trainable_params": self.trainable_params,
            "macs": self.macs,
            "by_type": dict(self.by_type),
            "input_shape": list(self.input_shape),
            "layers": [layer.as_dict() for layer in self.layers],
        }


def _prod(values) -> int:
    return int(math.prod(int(v) for v in values))


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        return _first_tensor(list(value.values()))
    return None


def _pool_kernel_elements(module: nn.Module) -> int:
    kernel = module.kernel_size
    if isinstance(kernel, int):
        dims = next(d for cls, d in _POOL_DIMS.items() if isinstance(module, cls))
        return kernel**dims
    return _prod(kernel)


def _layer_macs(module: nn.Module, inp: torch.Tensor | None, out: torch.Tensor | None) -> tuple[str, int]:
    """Category and MACs of one call, per the rules in the module docstring."""
    if out is None:
        return "other", 0
    if isinstance(module, _CONV):
        return "conv", out.numel() * (module.in_channels // module.groups) * _prod(module.kernel_size)
    if isinstance(module, _CONV_T):
        if inp is None:
            return "conv", 0
        return "conv", inp.numel() * (module.out_channels // module.groups) * _prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        if inp is None:
            return "linear", 0
        rows = inp.numel() // module.in_features
        return "linear", module.out_features * module.in_features * rows
    if isinstance(module, _NORM):
        return "bn", out.numel()
    if isinstance(module, _ADAPTIVE_POOL):
        return "pool", inp.numel() if inp is not None else 0
    if isinstance(module, _POOL):
        return "pool", out.numel() * _pool_kernel_elements(module)
    return "other", 0


def _model_device_and_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return None, torch.get_default_dtype()


def _check_input_shape(input_shape: Any) -> tuple[int, ...]:
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ConfigError(f"input_shape must be a tuple of positive integers like (3, 32, 32); got {input_shape!r}")
    return shape


def _hooked_modules(model: nn.Module, counted: tuple[type, ...]) -> list[tuple[str, nn.Module]]:
    """The modules to hook: every leaf module and every module of a ``counted`` type (e.g. a parametrized conv)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, counted) or next(module.children(), None) is None
    ]


def _hooked_forward(
    model: nn.Module,
    shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    modules: list[tuple[str, nn.Module]],
    on_call: Callable[[str, nn.Module, torch.Tensor | None, torch.Tensor | None], None],
) -> None:
    """Run ``model`` once on zeros of shape ``(1, *shape)`` in eval mode under ``torch.no_grad``, calling
    ``on_call(name, module, first input tensor, first output tensor)`` after every call of each module in ``modules``.

    The hooks are removed and every module's train/eval flag restored afterwards, also when the forward fails; a
    failing forward raises :class:`~resprout.errors.ConfigError`.
    """
    model_name = type(model).__name__

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            on_call(name, module, _first_tensor(inputs), _first_tensor(output))

        return hook

    training = {module: module.training for module in model.modules()}
    handles = []
    try:
        for name, module in modules:
            handles.append(module.register_forward_hook(make_hook(name or model_name)))
        model.eval()
        x = torch.zeros((1, *shape), device=device, dtype=dtype)
        with torch.no_grad():
            try:
                model(x)
            except (RuntimeError, ValueError, IndexError) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"model {model_name} cannot run on input shape {shape}: {reason}") from exc
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in training.items():
            module.training = mode


def profile_model(
    model: nn.Module, input_shape: tuple[int, ...], *, device: str | torch.device = "cpu"
) -> ModelProfile:
    """Count parameters and MACs of ``model`` on one input of shape ``input_shape`` (without the batch dimension).

    The model must already be on ``device``. Raises :class:`~resprout.errors.ConfigError` if the input shape is not
    a tuple of positive integers or the model cannot run on it.
    """
    model_name = type(model).__name__
    shape = _check_input_shape(input_shape)
    device = torch.device(device)
    param_device, dtype = _model_device_and_dtype(model)
    if param_device is not None and param_device.type != device.type:
        raise ConfigError(f"model {model_name} is on {param_device} but profile_model was asked for device={device}")

    params = {id(p): p for p in model.parameters()}  # parameters() already skips shared tensors; ids make it explicit
    total_params = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)

    layers: list[LayerCost] = []

    def on_call(name: str, module: nn.Module, inp: torch.Tensor | None, out: torch.Tensor | None) -> None:
        category, macs = _layer_macs(module, inp, out)
        layers.append(
            LayerCost(
                name=name,
                type=type(module).__name__,
                category=category,
                macs=int(macs),
                params=sum(p.numel() for p in module.parameters()),
                output_shape=None if out is None else tuple(out.shape),
            )
        )

    _hooked_forward(model, shape, device, dtype, _hooked_modules(model, _COUNTED), on_call)

    by_type = dict.fromkeys(CATEGORIES, 0)
    for layer in layers:
        by_type[layer.category] += layer.macs
    return ModelProfile(
        params=total_params,
        trainable_params=trainable,
        macs=sum(by_type.values()),
        by_type=by_type,
        layers=layers,
        input_shape=shape,
    )
