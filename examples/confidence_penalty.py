"""A method that uses only the run's context (ARCHITECTURE.md): cross-entropy with a confidence penalty (Pereyra et
al., 2017, Eq. 2), a learning-rate modifier for the last epoch, the steps counted per generation. Run it with
``resprout.train(..., method="confidence", methods=[ConfidencePenalty])``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from resprout.config import option
from resprout.engine.method import Method


def confidence_penalty(logits: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """The mean cross-entropy minus ``beta`` times the mean entropy of the predictions (Pereyra et al., Eq. 2)."""
    logp = F.log_softmax(logits.float(), dim=1)
    entropy = -(logp.exp() * logp).sum(dim=1).mean()
    return F.nll_loss(logp, targets) - beta * entropy


@dataclass
class ConfidenceOptions:
    beta: float = option(0.1, "weight of the entropy bonus (Pereyra et al.: 0.1 to 4)", min=0.0)
    last_lr: float = option(0.5, "factor of the base learning rate in the last epoch", min=0.0)


class ConfidencePenalty(Method):
    name = "confidence"
    Options = ConfidenceOptions
    provides_task_loss = True  # the run gets no cross-entropy of its own

    def setup(self, ctx) -> None:
        self.steps = 0
        last, factor = ctx.config.epochs - 1, self.options.last_lr
        for m in ctx.task_members:  # a base-rate modifier: (member, position, lr) -> lr
            ctx.rates.modify(m.name, lambda member, pos, lr: lr * factor if pos.epoch == last else lr)

    def on_generation_start(self, ctx) -> None:
        self.steps = 0

    def on_loss(self, ctx) -> None:
        for m in ctx.task_members:
            loss = confidence_penalty(ctx.outputs[m.name], ctx.targets_of(m.name), self.options.beta)
            ctx.add_loss(m.name, "confidence", loss)

    def on_batch_end(self, ctx) -> None:
        self.steps += 1

    def on_generation_end(self, ctx) -> None:
        for m in ctx.task_members:
            ctx.log_generation(m.name, {"confidence_steps": self.steps})

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state.get("steps", 0)
