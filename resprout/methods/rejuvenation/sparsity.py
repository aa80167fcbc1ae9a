"""Sparsity on BN scales (Qiao et al., "Neural Rejuvenation", CVPR 2019, Eq. 3 and Sec. 3.1.3; Liu et al., "Network
Slimming", ICCV 2017, Eq. 1).

The penalty ``lambda * sum |gamma|`` is applied as its sub-gradient ``lambda * sign(gamma)`` added to the BN
scales' gradients after the backward pass, as both official codes do (it is the same update as adding the term to
the loss, without a second graph).

**Lambda per epoch.** The term acts once per iteration: an SGD step moves a penalized scale by ``lr * lambda``, an
epoch by ``lr * lambda * N`` (N iterations). The papers' values are per iteration, on their data: Delta lambda =
5e-5 on ImageNet (5,005 iterations per epoch at batch 256, Sec. 4.1), the official CIFAR lambda 1.5e-4 (782
iterations at batch 64), Network Slimming's 1e-4 (CIFAR, batch 64). On 1,437 digits images at batch 64 an epoch is
23 iterations, so the same number does 1/218 of its ImageNet work per epoch. resprout states lambda **per epoch**
(``lambda * N``: the paper's Delta lambda is 5e-5 * 5,005 = 0.25 per epoch) and applies ``lambda_epoch / N`` per
iteration (:func:`per_iteration`), so its effect per epoch does not depend on the dataset's size.

Adaptive lambda (Sec. 3.1.3): lambda starts at 0; every Delta t the utilization ``r`` is compared with the one of the
previous check: if it fell by more than Delta r, lambda is kept, otherwise raised by Delta lambda
(:func:`next_lambda`). It goes back to 0 after a rejuvenation. Paper: Delta t = 1 epoch, Delta r = 0.01, Delta
lambda = 5e-5.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

DELTA_R = 0.01
DELTA_LAMBDA = 5e-5  # per iteration, on ImageNet (Sec. 4.1)
IMAGENET_ITERATIONS = 5005  # ceil(1,281,167 / 256): the iterations per epoch Delta lambda was set for
CIFAR_ITERATIONS = 782  # ceil(50,000 / 64): the official CIFAR code's (and Network Slimming's) batch 64
UNITS = ("epoch", "iteration")


def per_iteration(value: float, unit: str, iterations: int) -> float:
    """The lambda applied at each iteration for ``value`` given in ``unit``: ``epoch`` (lambda times the iterations
    of an epoch, its effect per epoch) gives ``value / iterations``; ``iteration`` (the papers' numbers as printed)
    gives ``value``. E.g. the paper's Delta lambda, ``5e-5 * 5005`` per epoch, is ``5e-5`` per iteration on ImageNet
    and ``0.0109`` on 23 iterations per epoch."""
    if unit == "iteration":
        return value
    if unit != "epoch":
        raise ValueError(f"unknown lambda unit {unit!r}; use {' or '.join(UNITS)}")
    return value / max(1, iterations)


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


def proximal_amount(lr: float, lam: float, momentum: float = 0.0) -> float:
    """How far the proximal step moves a scale: ``lr * lambda / (1 - momentum)``, the steady drift the sub-gradient
    ``lambda * sign(gamma)`` gives under SGD with that momentum (its velocity tends to ``lambda / (1 - momentum)``),
    so one lambda means the same pull with either ``l1``."""
    return lr * lam / (1.0 - momentum)


def soft_threshold(bns: Iterable[nn.Module], amount: float) -> None:
    """The proximal step of ``lambda * sum |gamma|`` after an optimizer step: ``gamma <- sign(gamma) *
    max(|gamma| - amount, 0)`` (:func:`proximal_amount`), in place.

    Not the papers' update (both official codes add the sub-gradient) but the same objective (Eq. 3). Under SGD
    with momentum the sub-gradient leaves a penalized scale oscillating around 0 with an amplitude that grows with
    ``lr * lambda``; with lambda per epoch a small dataset's lambda per iteration is large, every penalized scale
    then swings about as far as the largest one and none passes the ``0.01 * max|gamma|`` dead test. The proximal
    step reaches exact zeros."""
    if amount <= 0:
        return
    with torch.no_grad():
        for bn in bns:
            w = bn.weight
            w.copy_(torch.sign(w) * (w.abs() - amount).clamp(min=0))


# -- the sparsity window -----------------------------------------------------------------------------------------
def window_end(start: float, end: float, hold: float) -> float:
    """The deadline of a sparsity window that opens at ``start`` in a run ending at ``end``: ``hold`` of what
    remains (the paper keeps its ImageNet runs' flag on for the first 30 of 100 epochs, Sec. 4.1)."""
    return start + hold * (end - start)


def ramp_stretch(ramp: str, ramp_epochs: float, start: float, deadline: float) -> float:
    """The ramp's (the paper's) epochs per epoch of the run: 1 for ``ramp=epoch``; for ``ramp=window``
    ``max(1, ramp_epochs / (deadline - start))``: a window shorter than ``ramp_epochs`` epochs holds the paper's
    ``ramp_epochs`` epochs of adaptive lambda, a longer one follows the paper epoch by epoch."""
    if ramp == "epoch":
        return 1.0
    if ramp != "window":
        raise ValueError(f"unknown ramp {ramp!r}; use window or epoch")
    return max(1.0, ramp_epochs / max(deadline - start, 1e-12))
