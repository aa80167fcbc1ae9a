"""Parameter and multiply-accumulate (MAC) counts of a model, measured by running it once.

:func:`profile_model` runs one forward pass with a batch of 1 in eval mode under ``torch.no_grad``, with a forward
hook on every leaf module (and on every module of a counted type, so e.g. a parametrized conv is still counted).
The model's train/eval flags are restored and the hooks removed afterwards, also when the forward fails.

MAC rules (one multiply-add = 1 MAC; bias additions are not counted):

* conv and linear come from torch's own counter, :class:`torch.utils.flop_counter.FlopCounterMode` (its FLOPs / 2),
  which sees the operations themselves, not module types: a functional ``F.conv2d`` with a computed weight (a
  weight-standardized conv, say) or an ``F.linear`` / ``x @ w`` inside ``forward`` is counted like a layer. Convolution
  ops (grouped, depthwise and transposed included) are ``conv``; matrix products (``mm``, ``addmm``, ``bmm``,
  attention) are ``linear``. For the standard layers this is the textbook formula:
  conv ``output elements * (in_channels / groups) * prod(kernel_size)``, transposed conv
  ``input elements * (out_channels / groups) * prod(kernel_size)``, linear ``out_features * in_features * rows``.
  A layer's entry in ``layers`` holds what ran inside its call; what ran outside every hooked module (a functional
  conv in a container's ``forward``) is one extra entry named ``<functional>``.
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

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resprout import lazy_dynamo
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
lazy_dynamo.defer()  # torch's counter would otherwise import torch._dynamo on first use (seconds)
FUNCTIONAL = "<functional>"  # the layers entry of conv / matrix-product MACs done outside every hooked module


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


def _split_flops(counts: dict) -> tuple[int, int]:
    """(convolution MACs, matrix-product MACs) from a flop counter's per-op FLOPs (2 per multiply-add)."""
    conv = sum(v for op, v in counts.items() if "conv" in str(op))
    return conv // 2, (sum(counts.values()) - conv) // 2


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
    on_enter: Callable[[str, nn.Module], None] | None = None,
    context: Any = None,
) -> None:
    """Run ``model`` once on zeros of shape ``(1, *shape)`` in eval mode under ``torch.no_grad``, calling
    ``on_call(name, module, first input tensor, first output tensor)`` after every call of each module in ``modules``
    (and ``on_enter(name, module)`` before it, if given). ``context`` (a context manager, e.g. torch's flop
    counter) is entered around the forward.

    The hooks are removed and every module's train/eval flag restored afterwards, also when the forward fails; a
    failing forward raises :class:`~resprout.errors.ConfigError`.
    """
    model_name = type(model).__name__

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            on_call(name, module, _first_tensor(inputs), _first_tensor(output))

        return hook

    def make_pre_hook(name: str):
        def pre_hook(module: nn.Module, inputs: tuple) -> None:
            on_enter(name, module)

        return pre_hook

    training = {module: module.training for module in model.modules()}
    handles = []
    try:
        for name, module in modules:
            if on_enter is not None:
                handles.append(module.register_forward_pre_hook(make_pre_hook(name or model_name)))
            handles.append(module.register_forward_hook(make_hook(name or model_name)))
        model.eval()
        x = torch.zeros((1, *shape), device=device, dtype=dtype)
        with torch.no_grad(), (context if context is not None else contextlib.nullcontext()):
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
    counter = FlopCounterMode(display=False)
    stack: list[list] = []  # per open call: [counts when it started, MACs of hooked calls inside it]
    own = [0, 0]  # conv and matrix-product MACs counted inside hooked calls

    def counted() -> tuple[int, int]:
        """(conv, matrix-product) MACs torch's counter has seen so far in this forward."""
        return _split_flops(counter.flop_counts.get("Global", {}))

    def on_enter(name: str, module: nn.Module) -> None:
        stack.append([counted(), (0, 0)])

    def on_call(name: str, module: nn.Module, inp: torch.Tensor | None, out: torch.Tensor | None) -> None:
        (conv0, mm0), (inner_conv, inner_mm) = stack.pop()
        conv1, mm1 = counted()
        if stack:  # what ran in this call is not the enclosing call's own work
            outer = stack[-1]
            outer[1] = (outer[1][0] + conv1 - conv0, outer[1][1] + mm1 - mm0)
        conv, mm = conv1 - conv0 - inner_conv, mm1 - mm0 - inner_mm
        own[0] += conv
        own[1] += mm
        category, macs = _layer_macs(module, inp, out)
        if category in ("conv", "linear") or conv or mm:  # torch's count replaces the formula
            category = "conv" if conv >= mm and (conv or category == "conv") else "linear"
            macs = conv + mm
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

    _hooked_forward(model, shape, device, dtype, _hooked_modules(model, _COUNTED), on_call, on_enter=on_enter,
                    context=counter)
    total_conv, total_mm = counted()
    for category, rest in (("conv", total_conv - own[0]), ("linear", total_mm - own[1])):
        if rest > 0:  # a functional conv or matmul outside every hooked module
            layers.append(LayerCost(FUNCTIONAL, "functional", category, int(rest), 0, None))

    by_type = dict.fromkeys(CATEGORIES, 0)
    for layer in layers:
        by_type[layer.category] += layer.macs
    by_type["conv"], by_type["linear"] = total_conv, total_mm  # torch's count, by operation (see the docstring)
    return ModelProfile(
        params=total_params,
        trainable_params=trainable,
        macs=sum(by_type.values()),
        by_type=by_type,
        layers=layers,
        input_shape=shape,
    )
