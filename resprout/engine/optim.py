"""Optimizers and learning-rate schedules.

A schedule is a pure function of the position inside a generation (fractional epoch), not an object with a
step counter: the rate at any step is recomputed from where the run is, so a resumed run cannot drift from an
uninterrupted one, and a new generation restarts the schedule by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from resprout import lazy_dynamo
# what a member may set for itself: the keys whose scope (on the Config fields) says optimizer or schedule
from resprout.config import MEMBER_KEYS, OPTIM_KEYS, SCHEDULE_KEYS  # noqa: F401  (re-exported)
from resprout.errors import ConfigError

lazy_dynamo.defer()  # torch's optimizers would import torch._dynamo (seconds) in a run that never compiles


def param_groups(model: nn.Module, weight_decay: float, decay_bn_bias: bool) -> list[dict]:
    """One group, or two when BN parameters and biases (every parameter with fewer than 2 dims) skip decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_bn_bias or weight_decay == 0:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, spec: dict) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, weight decay) or Adam from a dict with the keys of :data:`OPTIM_KEYS`."""
    groups = param_groups(model, spec["weight_decay"], spec["decay_bn_bias"])
    if not any(g["params"] for g in groups):
        raise ConfigError("the model has no trainable parameters")
    name = spec["optimizer"]
    if name == "sgd":
        if spec["nesterov"] and spec["momentum"] == 0:
            raise ConfigError("nesterov=true needs momentum > 0")
        opt = lazy_dynamo.eager(torch.optim.SGD)(groups, lr=spec["lr"], momentum=spec["momentum"],
                                                 nesterov=spec["nesterov"])
    elif name == "adam":
        opt = lazy_dynamo.eager(torch.optim.Adam)(groups, lr=spec["lr"], betas=tuple(spec["betas"]))
    else:
        raise ConfigError(f"unknown optimizer {name!r}; allowed: sgd, adam")
    for g in opt.param_groups:
        g["initial_lr"] = spec["lr"]
    return opt


@dataclass(frozen=True)
class Schedule:
    """Learning-rate factor at fractional epoch ``t`` of a generation of ``epochs`` epochs.

    ``cosine``: half a cosine from 1 to 0 after the warmup; ``step``: times ``gamma`` at each milestone;
    ``constant``: 1. A linear warmup over ``warmup`` epochs precedes all three.
    """

    kind: str
    epochs: int
    warmup: float = 0.0
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1

    def factor(self, t: float, dt: float = 0.0) -> float:
        """``t``: epochs done at the start of this step; ``dt``: the length of one step in epochs."""
        if self.warmup > 0 and t < self.warmup:
            return min(1.0, (t + dt) / self.warmup) if dt > 0 else max(t / self.warmup, 1e-3)
        if self.kind == "cosine":
            span = max(self.epochs - self.warmup, 1e-12)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (t - self.warmup) / span)))
        if self.kind == "step":
            return self.gamma ** sum(1 for m in self.milestones if t >= m)
        return 1.0

    @classmethod
    def from_config(cls, cfg) -> Schedule:
        return cls.from_spec({k: getattr(cfg, k) for k in SCHEDULE_KEYS}, cfg.epochs)

    @classmethod
    def from_spec(cls, spec: dict, epochs: int) -> Schedule:
        """From the :data:`SCHEDULE_KEYS` of a dict (the config's, or a member's own)."""
        milestones = tuple(spec["milestones"]) or (0.5 * epochs, 0.75 * epochs)
        return cls(spec["schedule"], epochs, spec["warmup_epochs"], tuple(sorted(milestones)), spec["gamma"])


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]
