"""Distillation losses and the methods built on them.

* :func:`kd_loss`: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015): the KL divergence between
  temperature-softened distributions, times ``T^2`` so its gradients keep their scale as ``T`` changes.
* :class:`ClassWiseSelfKD` (``method=cskd``): Yun et al., "Regularizing Class-wise Predictions via Self-knowledge
  Distillation", CVPR 2020, Sec. 3: each anchor's prediction is pulled towards the (fixed) prediction of another
  image of its class, ``L = CE(x) + lambda * T^2 * KL(P(y|x'; T) || P(y|x; T))``. The Knowledge Evolution paper
  composes it with KE at ``T = 4``, ``lambda = 3`` (Taha et al. CVPR 2021, Sec. 4.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from resprout.config import option
from resprout.engine.method import Method


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, summed over classes, averaged over the batch."""
    t = temperature
    log_p = F.log_softmax(student_logits / t, dim=1)
    q = F.softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * (t * t)


@dataclass
class CSKDOptions:
    temperature: float = option(4.0, "T: softening temperature", min=0.0, min_exclusive=True)
    weight: float = option(3.0, "lambda_cls: weight of the class-wise distillation term", min=0.0)


class ClassWiseSelfKD(Method):
    """``method=cskd``: batches of anchors and same-class partners; the task loss (CE by default) on the anchors,
    plus ``weight * kd_loss(anchor, partner)`` with the partner's prediction computed without gradient."""

    name = "cskd"
    Options = CSKDOptions
    sampler = "class_pair"

    def __init__(self, options=None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self._partners: torch.Tensor | None = None

    def on_batch_start(self, trainer) -> None:
        # the class-pair sampler yields [anchors | partners]; the members train on the anchors
        half = len(trainer.targets) // 2
        self._partners = trainer.inputs[half:]
        trainer.inputs, trainer.targets = trainer.inputs[:half], trainer.targets[:half]

    def on_loss(self, trainer) -> None:
        for m in trainer.task_members:
            with torch.no_grad():  # as in the paper: the partner's prediction is a fixed target
                partner_logits = m.model(self._partners)
            term = self.options.weight * kd_loss(trainer.outputs[m.name], partner_logits, self.options.temperature)
            trainer.add_loss(m.name, "cskd", term)
        self._partners = None
