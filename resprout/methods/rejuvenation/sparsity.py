"""Sparsity on BN scales (Qiao et al., "Neural Rejuvenation", CVPR 2019, Eq. 3 and Sec. 3.1.3; Liu et al., "Network
Slimming", ICCV 2017, Eq. 1).

The penalty ``lambda * sum |gamma|`` is applied as its sub-gradient ``lambda * sign(gamma)`` added to the BN
scales' gradients after the backward pass, as both official codes do (it is the same update as adding the term to
the loss, without a second graph).

Adaptive lambda (Sec. 3.1.3): lambda starts at 0; every Delta t the utilization ``r`` is compared with the one of the
previous check: if it fell by more than Delta r, lambda is kept, otherwise raised by Delta lambda. It goes back to 0
after a rejuvenation. Paper defaults: Delta t = 1 epoch, Delta r = 0.01, Delta lambda = 5e-5.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

DELTA_R = 0.01
DELTA_LAMBDA = 5e-5


def add_l1_subgradient(bns: Iterable[nn.Module], lam: float) -> None:
    """``gamma.grad += lam * sign(gamma)`` for every BN scale (Eq. 3); a no-op at ``lam == 0``."""
    if lam == 0:
        return
    with torch.no_grad():
        for bn in bns:
            w = bn.weight
            if w.grad is None:
                w.grad = lam * torch.sign(w)
            else:
                w.grad.add_(torch.sign(w), alpha=lam)


def l1_penalty(bns: Iterable[nn.Module], lam: float) -> torch.Tensor:
    """``lam * sum |gamma|`` (Eq. 3) as a differentiable term, for loops that prefer a loss term."""
    terms = [bn.weight.abs().sum() for bn in bns]
    return lam * torch.stack(terms).sum() if terms else torch.zeros(())


def next_lambda(lam: float, r: float, r_prev: float, *, delta_r: float = DELTA_R,
                delta_lambda: float = DELTA_LAMBDA) -> float:
    """One adaptive step (Sec. 3.1.3): keep ``lam`` if ``r < r_prev - delta_r``, otherwise ``lam + delta_lambda``."""
    return lam if r < r_prev - delta_r else lam + delta_lambda


def soft_threshold(bns: Iterable[nn.Module], amount: float) -> None:
    """The proximal step of ``lambda * sum |gamma|`` after an optimizer step: ``gamma <- sign(gamma) *
    max(|gamma| - lr * lambda, 0)`` (``amount = lr * lambda``), in place.

    Not the papers' update (both official codes add the sub-gradient) but the same objective (Eq. 3): the
    sub-gradient leaves a penalized scale oscillating around 0 with amplitude ``lr * lambda``, which in a short run
    with a large lambda stays above the ``0.01 * max|gamma|`` dead test; the proximal step reaches exact zeros."""
    if amount <= 0:
        return
    with torch.no_grad():
        for bn in bns:
            w = bn.weight
            w.copy_(torch.sign(w) * (w.abs() - amount).clamp(min=0))
