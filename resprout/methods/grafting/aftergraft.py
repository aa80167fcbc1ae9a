"""What a graft leaves stale besides the weights: batch-norm running statistics and SGD momentum.

The paper (Sec. 3.1.3, Eq. 2) mixes weights and says nothing of either; the official code blends every
``state_dict`` entry, BN running mean and variance included, and keeps each network's optimizer as it was (one
process per network, weights copied in place by ``load_state_dict``). Both leave something that does not belong
to the grafted network:

* **BN statistics.** ``alpha * var_k + (1 - alpha) * var_{k-1}`` is not the variance of the mixed network's
  features (nor is the mixed mean their mean). :func:`reestimate_bn` recomputes them from training batches, as
  ``torch.optim.swa_utils.update_bn`` does after weight averaging (SWA has the same problem);
* **momentum.** The SGD velocity was accumulated for the pre-graft weights. :func:`reset_momentum` zeroes the
  momentum buffers of the grafted entries. For SGD without dampening (resprout's) zeroing equals dropping the
  buffer: the next step starts again from ``buf = grad``, as a fresh optimizer would.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from resprout.methods.dsd import mask_optimizer_state


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> bool:
    """Reset every BN's running statistics and recompute them as the plain average over ``batches`` (inputs, or
    (inputs, targets) pairs) in training mode, with ``torch.optim.swa_utils.update_bn``. The random state is left
    as it was (a forward in training mode may draw, e.g. for dropout). Returns whether the model has a BN."""
    from torch.optim.swa_utils import update_bn

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        update_bn(batches, model)
    return True


def reset_momentum(optimizer: torch.optim.Optimizer | None, model: nn.Module,
                   rows: dict[str, torch.Tensor] | None = None) -> None:
    """Zero the momentum buffers of ``model``'s parameters in ``optimizer``: all of them (``rows=None``, an
    external graft mixes every entry), or only the given filters (dim-0 indices) of the named parameters (noise
    and internal scions touch invalid filters only)."""
    if optimizer is None:
        return
    params = dict(model.named_parameters())
    if rows is None:
        masks = {n: torch.zeros(p.shape, dtype=torch.bool, device=p.device) for n, p in params.items()}
    else:
        masks = {}
        for n, idx in rows.items():
            mask = torch.ones(params[n].shape, dtype=torch.bool, device=params[n].device)
            mask[idx] = False
            masks[n] = mask
    mask_optimizer_state(optimizer, model, masks)
