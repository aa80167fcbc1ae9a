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

:func:`count_ke_paper` (and :func:`ke_paper_printed`) count instead the way the Knowledge Evolution paper
(Taha et al., CVPR 2021, Table 5) did: operations (multiplies and adds) and parameters including split masks. Use
them only to compare with that paper; see their docstrings for the rules.
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
    "KE_PAPER_CONVENTION",
    "LayerCost",
    "ModelProfile",
    "count_ke_paper",
    "ke_paper_printed",
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


# ---------------------------------------------------------------------------------------------------------------------
# The Knowledge Evolution paper's counting convention (for comparison with its Table 5 only).

KE_PAPER_CONVENTION = "ke-paper"

_KE_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_KE_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_KE_AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_KE_MASKED = _CONV + (nn.Linear,)  # the layers whose weight carries a same-shaped split mask parameter
_KE_COUNTED = _CONV + (nn.Linear,) + _KE_BN + (nn.ReLU,) + _KE_MAXPOOL + _KE_AVGPOOL


def _ke_pool_kernel_ops(module: nn.Module) -> int:
    """``prod(Tensor([kernel_size]))`` of the reference: an int kernel_size ``k`` gives ``k`` (not ``k ** dims``)."""
    kernel = module.kernel_size
    return int(kernel) if isinstance(kernel, int) else _prod(kernel)


def _ke_call_ops(module: nn.Module, inp: torch.Tensor | None, out: torch.Tensor | None) -> tuple[int, float]:
    """Operations of one call under the KE-paper rules: ``(exact integer, value the reference's float32 code got)``.

    The second value differs from the first only by float32 rounding (the reference stores every count in a float32
    tensor; for pooling it also multiplies in float32 before converting to int).
    """
    ops: int
    if out is None:
        return 0, 0.0
    if isinstance(module, _CONV):
        per_output = 2 * _prod(module.kernel_size) * (module.in_channels // module.groups) - 1
        ops = out.numel() * (per_output + (1 if module.bias is not None else 0))
    elif isinstance(module, nn.Linear):
        ops = (2 * module.in_features - 1) * out.numel()
    elif isinstance(module, _KE_BN):
        ops = 2 * inp.numel() if inp is not None else 0
    elif isinstance(module, nn.ReLU):
        ops = inp.numel() if inp is not None else 0
    elif isinstance(module, (_KE_MAXPOOL + _KE_AVGPOOL)):
        # Max: (kernel - 1) comparisons per output; avg: (kernel - 1) additions + 1 division per output.
        kernel_ops = _ke_pool_kernel_ops(module) - (1 if isinstance(module, _KE_MAXPOOL) else 0)
        ops = kernel_ops * out.numel()
        as_float32 = torch.tensor(float(kernel_ops), dtype=torch.float32) * torch.tensor(
            float(out.numel()), dtype=torch.float32
        )
        return ops, float(int(as_float32.item()))
    else:
        return 0, 0.0
    return ops, float(ops)


def _ke_paper_tally(model: nn.Module, input_shape: Any) -> list[tuple[list[tuple[int, float]], list[int]]]:
    """Per module of ``model.modules()`` (in that order): its calls' ``_ke_call_ops`` and its parameter sizes.

    The parameter sizes of a module are those of its own parameters (each parameter of the model once), followed by
    the size of its split mask (= its weight) if it is a conv or linear layer.
    """
    shape = _check_input_shape(input_shape)
    device, dtype = _model_device_and_dtype(model)
    calls: dict[nn.Module, list[tuple[int, float]]] = {module: [] for module in model.modules()}

    def on_call(name: str, module: nn.Module, inp: torch.Tensor | None, out: torch.Tensor | None) -> None:
        calls[module].append(_ke_call_ops(module, inp, out))

    _hooked_forward(
        model, shape, device or torch.device("cpu"), dtype, _hooked_modules(model, _KE_COUNTED), on_call
    )

    seen: set[int] = set()
    tally = []
    for module, module_calls in calls.items():
        sizes = []
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                sizes.append(p.numel())
        weight = getattr(module, "weight", None)
        if isinstance(module, _KE_MASKED) and isinstance(weight, torch.Tensor):
            sizes.append(weight.numel())  # the split mask: an nn.Parameter of the weight's shape
        tally.append((module_calls, sizes))
    return tally


def count_ke_paper(model: nn.Module, input_shape: tuple[int, ...] = (3, 224, 224)) -> dict[str, Any]:
    """Operations and parameters of ``model`` counted the way the Knowledge Evolution paper counted them.

    For comparison with Taha et al., "Knowledge Evolution in Neural Networks", CVPR 2021, Table 5 (ResNet-18,
    224x224, 100 classes: dense 3.63 G-Ops / 22.44 M params, slim fit hypothesis at split rate 0.5: 0.96 G-Ops /
    5.64 M params) **only**. These are not true parameter counts or MACs; :func:`profile_model` reports those.
    For ``resnet18`` (``stem="imagenet"``, 100 classes) this returns ops 3,632,418,204 and params 22,445,924, against
    11,227,812 true parameters; with ``width=0.5`` (the slim network) 968,435,356 and 5,644,260.

    Returns ``{"ops": int, "params": int, "convention": "ke-paper"}``, ``ops`` in plain operations (not G).
    One forward pass on zeros of shape ``(1, *input_shape)`` (batch 1) runs in eval mode under ``torch.no_grad``
    with a forward hook on every leaf module (and every module of a counted type); hooks are removed and every
    module's train/eval flag restored afterwards. The model must be able to run on its own device.

    Operations, per call of a module (a module called twice counts twice; e.g. the reference BasicBlock calls one
    ReLU twice, the models here use two ReLUs, the count is the same):

    * conv (``Conv1d/2d/3d``): ``output elements * (2 * prod(kernel_size) * in_channels / groups - 1 + b)`` with
      ``b = 1`` if the conv has a bias: multiplies plus adds, about 2x MACs.
    * ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``: ``2 * input elements``.
    * ``ReLU``: ``1 * input elements``. Other activations count 0.
    * ``MaxPool1d/2d/3d``: ``(prod(Tensor([kernel_size])) - 1) * output elements``. Quirk kept on purpose: an int
      ``kernel_size=3`` is a one-element tensor, so a 3x3 max-pool counts ``2`` per output, not ``8``; a tuple
      ``(3, 3)`` counts ``8``.
    * ``AvgPool1d/2d/3d``: ``prod(Tensor([kernel_size])) * output elements`` (``kernel - 1`` additions and one
      division per output), with the same int-kernel quirk as max-pool, as in the reference profiler.
    * ``Linear``: ``(2 * in_features - 1) * output elements`` (bias not counted).
    * everything else counts 0: adaptive pooling (the global ``AdaptiveAvgPool2d`` of ResNet), transposed convs,
      other norms, dropout, and anything done outside modules (residual additions, ``torch.flatten``).

    Parameters: every parameter of the model, once, **plus one split mask per conv and linear layer**: the
    reference stores a binary mask of the weight's shape as an ``nn.Parameter``, so every conv and linear weight
    counts twice (the slim network carries an all-ones mask, so it counts twice too). Biases and BN affine
    parameters count once; BN running statistics are buffers and do not count. (The reference sums the parameters
    of leaf modules; for models whose parameters all live in leaf modules, as all built-in models, this is the same.)

    The reference keeps every count in a float32 tensor and prints ``"%f" % (total / 1e9)`` (G-Ops) and
    ``"%f" % (total / 1e6)`` (M) with the division done in float32; this function returns exact integers instead.
    :func:`ke_paper_printed` reproduces the printed strings, float32 rounding included: for resnet18 with 100
    classes the exact 22,445,924 prints as ``22.445925`` because the float32 quotient is 22.44592476.
    """
    ops = 0
    params = 0
    for module_calls, sizes in _ke_paper_tally(model, input_shape):
        ops += sum(exact for exact, _ in module_calls)
        params += sum(sizes)
    return {"ops": ops, "params": params, "convention": KE_PAPER_CONVENTION}


def ke_paper_printed(model: nn.Module, input_shape: tuple[int, ...] = (3, 224, 224)) -> dict[str, str]:
    """The ``#Ops: %f GOps`` and ``#Parameters: %f M`` numbers as the paper's profiler printed them.

    Same rules as :func:`count_ke_paper`, with the reference's float32 arithmetic emulated: each call's count is
    rounded to float32 and added to its module's float32 total, the module totals are added in float32 in
    ``model.modules()`` order, and the total is divided by ``1e9`` (ops) or ``1e6`` (params) in float32 before
    ``"%f"`` formatting. Returns ``{"gops": "3.632418", "mparams": "22.445925"}`` for resnet18 (imagenet stem,
    100 classes): exactly the values in the paper's own log, whose truncation to 2 decimals is Table 5.
    """
    total_ops = torch.zeros((), dtype=torch.float32)
    total_params = torch.zeros((), dtype=torch.float32)
    for module_calls, sizes in _ke_paper_tally(model, input_shape):
        module_ops = torch.zeros((), dtype=torch.float32)
        for _, as_float32 in module_calls:
            module_ops += torch.tensor(as_float32, dtype=torch.float32)
        module_params = torch.zeros((), dtype=torch.float32)
        for size in sizes:
            module_params += torch.tensor(float(size), dtype=torch.float32)
        total_ops += module_ops
        total_params += module_params
    return {"gops": "%f" % (total_ops / 1e9).item(), "mparams": "%f" % (total_params / 1e6).item()}
