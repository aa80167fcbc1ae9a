"""Training with mixed neuron types (Qiao et al., "Neural Rejuvenation", CVPR 2019, Sec. 3.3), on any traced model.

After a rejuvenation every layer has S (survived) and R (rejuvenated) channels, as per-channel labels
(:func:`~.rebuild.labels_of`). Design choice: the network stays one ordinary dense module; the schemes are masks on
its weights and forward hooks on its layers, so every model the monitor accepts works, checkpoints keep plain
``state_dict`` keys and the engine's surgery and resume need nothing special.

* ``nr`` (Eq. 5): cross connections kept, plain training. Nothing to install.
* ``cr`` (Eq. 6): cross connections removed. ``W_S->R`` and ``W_R->S`` start at zero and their gradients are
  masked to zero (:func:`mask_gradients`), so they stay zero under SGD, momentum, weight decay and Adam: S and R are
  two networks that share only the image (and the classifier, which reads both).
* ``ca`` (Eq. 9, 10): cross attention. A forward hook on every layer with cross weights replaces its output ``y`` by
  ``O = Y_own + 2 sigma(Y_own) * Y_cross``, with ``Y_cross = W_cross * x`` (the cross block alone, one extra
  convolution) and ``Y_own = y - Y_cross`` (``W_S->S * S_in`` for S outputs, ``W_R->R * R_in`` for R outputs).
  The sigmoid is taken before the BN, as in the official code. With zero cross weights ``O = y``: NR-CA is then
  exactly NR-CR.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resprout.methods.rejuvenation.monitor import Topology
from resprout.methods.rejuvenation.rebuild import cross_mask

SCHEMES = ("nr", "cr", "ca")


def cross_masks(model: nn.Module, topo: Topology, labels: dict[str, list]) -> dict[str, torch.Tensor]:
    """Per layer module with cross connections, a weight-shaped float mask: 1 on ``W_S->R`` and ``W_R->S``."""
    out = {}
    for layer in topo.layers:
        if layer.depthwise or not layer.first_call:
            continue
        cross = cross_mask(topo, labels, layer)
        if not cross.any():
            continue
        w = model.get_submodule(layer.module).weight
        out[layer.module] = cross.view(*cross.shape, *[1] * (w.dim() - 2)).expand_as(w).to(w.device, w.dtype)
    return out


def zero_cross(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Set the cross weights to zero, in place (NR-CR's starting point and invariant)."""
    with torch.no_grad():
        for module, mask in masks.items():
            model.get_submodule(module).weight.mul_(1 - mask)


def mask_gradients(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """NR-CR: no gradient into the cross weights (call after backward, before the optimizer step)."""
    for module, mask in masks.items():
        g = model.get_submodule(module).weight.grad
        if g is not None:
            g.mul_(1 - mask)


def cross_attention(y_own: torch.Tensor, y_cross: torch.Tensor) -> torch.Tensor:
    """Eq. 9 / 10: ``y_own + 2 * sigmoid(y_own) * y_cross``."""
    return y_own + 2 * torch.sigmoid(y_own) * y_cross


def _cross_output(module: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(x, w)
    return module._conv_forward(x, w, None)


def install_cross_attention(model: nn.Module, masks: dict[str, torch.Tensor]) -> list:
    """Forward hooks that turn each masked layer into its cross-attention form (Eq. 9, 10); returns the handles."""
    handles = []
    for path, mask in masks.items():
        module = model.get_submodule(path)
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue

        def hook(mod, inputs, output, mask=mask):
            y_cross = _cross_output(mod, inputs[0], mod.weight * mask)
            return cross_attention(output - y_cross, y_cross)

        handles.append(module.register_forward_hook(hook))
    return handles


def half_labels(topo: Topology, keys: list[str]) -> dict[str, list]:
    """BL-CA: each unit split in two halves (first half S, second R), for cross attention on the baseline."""
    out = {}
    for key in keys:
        c = topo.units[key].channels
        s = (c + 1) // 2
        out[key] = [0] * s + [1] * (c - s)
    return out
