"""Members of a run and the update steps that train them.

A *member* is one named network: ``model``; a ``student`` and a frozen ``teacher``; ``peer_1..K``; a
``discriminator`` or a ``regressor``. Each trainable member has its own optimizer and may have its own optimizer
settings and schedule (``member.<name>.lr=...`` in the config, or ``optim=`` in code).

* A *fed* member is forwarded on every training batch by the trainer; a *manual* member (``manual=True``: a
  discriminator, a regressor) is not, and the method that owns it calls it on whatever it needs.
* *Placement* says where a member lives in a distributed run: ``replicated`` (DDP over all ranks, the default) or
  ``per_rank`` (the member lives on rank ``rank`` only, e.g. grafting's peer k on rank k).

An :class:`UpdateStep` is one optimization step of a batch: the members whose optimizers step and the loss terms
that are backpropagated into them (and into nothing else). The default is one step over every trainable member
and every term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

PLACEMENTS = ("replicated", "per_rank")


@dataclass
class Member:
    """One network of a run. ``optim`` overrides optimizer and schedule keys of the config for this member only."""

    name: str
    model: nn.Module
    trainable: bool = True
    evaluate: bool = True
    task: bool = True  # trained on the task loss (a classifier); False for discriminators, regressors, ...
    logits: bool = True  # its output is class logits (train accuracy is counted); False for embeddings
    manual: bool = False  # not forwarded on the batch by the trainer
    placement: str = "replicated"
    rank: int | None = None  # per_rank: the rank it lives on
    data_seed: int | None = None  # its own data order and augmentation (None: the run's)
    optim: dict = field(default_factory=dict)
    optimizer: torch.optim.Optimizer | None = None
    schedule: Any = None  # its learning-rate schedule (set by the trainer)
    forward_module: nn.Module | None = None  # the model, or its DistributedDataParallel wrapper
    local: bool = True  # False for a per_rank member that lives on another rank

    def __call__(self, *inputs: Any) -> Any:
        # `is not None`, not `or`: torch.compile's wrapper has no truth value (it proxies len() to the model)
        return (self.forward_module if self.forward_module is not None else self.model)(*inputs)

    @property
    def fed(self) -> bool:
        return self.trainable and self.local and not self.manual


@dataclass(frozen=True)
class UpdateStep:
    """One optimization step: ``members`` step their optimizers on the sum of their loss ``terms``.

    ``terms`` names the terms (``"ce"``, ``"adv"``); None takes every term added for these members in this step.
    Gradients reach only the parameters of ``members`` (backward with ``inputs=``), so a term never changes a
    member the step does not name: a student's adversarial term cannot train the discriminator.
    """

    name: str
    members: tuple[str, ...]
    terms: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))
        if self.terms is not None:
            object.__setattr__(self, "terms", tuple(self.terms))
