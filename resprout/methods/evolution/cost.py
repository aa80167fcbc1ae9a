"""The Knowledge Evolution paper's cost-counting convention (Taha et al., CVPR 2021, Table 5), for comparison with
that paper only.

:func:`count_ke_paper` (and :func:`ke_paper_printed`) count operations (multiplies and adds) and parameters including
the split masks, the way the paper's profiler did; see their docstrings for the rules. True parameter counts and
MACs are :func:`resprout.surgery.profile.profile_model`; this module reuses its generic hooks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from resprout.surgery.profile import (
    _CONV,
    _check_input_shape,
    _hooked_forward,
    _hooked_modules,
    _model_device_and_dtype,
    _prod,
)

__all__ = ["KE_PAPER_CONVENTION", "count_ke_paper", "ke_paper_printed"]

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
