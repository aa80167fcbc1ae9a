"""Task losses: cross-entropy and label smoothing.

Label smoothing (Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016, Sec. 7) trains against
``q' = (1 - eps) * onehot(y) + eps / K``, i.e. ``(1 - eps) * CE + eps * mean_k(-log p_k)``. The Knowledge
Evolution paper composes it with KE at ``eps = 0.1`` (Taha et al. CVPR 2021, Table 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from resprout.config import option
from resprout.engine.method import Method


def smooth_labels(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Soft targets ``(1 - eps) * onehot + eps / K`` (Szegedy et al. 2016, Sec. 7)."""
    soft = torch.full((len(targets), num_classes), smoothing / num_classes, device=targets.device)
    return soft.scatter_(1, targets[:, None], 1.0 - smoothing + smoothing / num_classes)


def smooth_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean cross-entropy against smoothed labels: ``(1 - eps) * NLL(y) + eps * mean_k(-log p_k)``."""
    logp = F.log_softmax(logits, dim=1)
    nll = -logp.gather(1, targets[:, None]).squeeze(1)
    uniform = -logp.mean(dim=1)
    return ((1.0 - smoothing) * nll + smoothing * uniform).mean()


class CrossEntropy(Method):
    """Plain cross-entropy on every task member: the baseline, and the default task loss. On a detection run
    (:class:`~resprout.engine.detection.DetectionTask`) it is plain training: every loss the detector computes."""

    name = "ce"
    provides_task_loss = True

    detection = True

    def on_loss(self, trainer) -> None:
        task = trainer.task
        for m in trainer.task_members:
            if task.model_loss:  # a detector: plain training is the sum of the losses it computed itself
                for name, value in task.losses(trainer.outputs[m.name]).items():
                    trainer.add_loss(m.name, name, value)
            else:
                trainer.add_loss(m.name, "ce", F.cross_entropy(trainer.outputs[m.name], trainer.targets_of(m.name)))


@dataclass
class LabelSmoothingOptions:
    smoothing: float = option(0.1, "weight of the uniform distribution in the targets", min=0.0, max=1.0)


class LabelSmoothing(Method):
    """Cross-entropy against smoothed labels (``method=ls``, option ``ls.smoothing``, default 0.1)."""

    name = "ls"
    Options = LabelSmoothingOptions
    provides_task_loss = True

    def on_loss(self, trainer) -> None:
        eps = self.options.smoothing
        for m in trainer.task_members:
            targets = trainer.targets_of(m.name)  # a member with its own data stream has its own labels
            trainer.add_loss(m.name, "ls", smooth_cross_entropy(trainer.outputs[m.name], targets, eps))
