"""The optimizer and the learning rate of reference training loops, written out.

A reference loop that built its optimizer with resprout's ``build_optimizer`` and set its rate with ``set_lr`` and
``Schedule.factor`` would share any bug of those with the run it checks. These are torch's ``SGD`` built by hand
and the cosine schedule's formula; every method family has at least one test whose reference loop uses them
(tests/test_reference_loops.py lists them).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# tests.conftest.synthetic's learning rate; resprout's default momentum and weight decay (one group: decay_bn_bias)
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


def sgd(model: nn.Module, lr: float = LR) -> torch.optim.SGD:
    """SGD with momentum and L2 weight decay on every trainable parameter of ``model``."""
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=MOMENTUM,
                           weight_decay=WEIGHT_DECAY)


def cosine(t: float, epochs: int) -> float:
    """The cosine schedule at fractional epoch ``t`` of a generation of ``epochs`` epochs:
    ``0.5 * (1 + cos(pi * t / T))``, from 1 down to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * (t / epochs)))


def step(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the rate of every group to ``lr``, then step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
