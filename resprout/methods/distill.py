"""Distillation losses and the methods built on them.

* :func:`kd_loss`: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015): the KL divergence between
  temperature-softened distributions, times ``T^2`` so its gradients keep their scale as ``T`` changes.
* :func:`soft_targets` / :func:`kd_loss_to`: the same against a given target distribution, e.g. the mean of
  several teachers' softened probabilities (Grafting+, Meng et al. 2020, Sec. "Grafting+": ``p_bar^t``).
* :class:`KnowledgeDistillation` (``method=kd``): ``ce_weight * CE + weight * T^2 * KL(p_bar^t || p^s)``, Hinton's
  setting as in the KTAN paper's Table I (Liu et al., Sec. IV-A (3): ``T = 4``, weight 0.9, CE weight 0.1).
  Grafting+'s recipe ``CE + tau^2 * softCE(p_bar^t, p^s)`` is ``kd.temperature=2 kd.weight=1 kd.ce_weight=1``
  (soft cross-entropy and KL differ by the target's entropy, a constant: the same gradients). On a detector (KTAN
  Sec. IV-B, Table II's KD row) the same two terms act on the box head's class logits of the student's sampled
  proposals, scored by the teacher detector on those same proposals (:mod:`resprout.methods.detectors`): the
  detector's classification loss is weighted by ``ce_weight``, its box regression and RPN losses are kept as they
  are (the teacher's softmax says nothing about them).
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
from resprout.errors import ConfigError
from resprout.methods.detectors import CLS_SCORE, ROI_POOL, check_detector, teacher_proposal_logits
from resprout.methods.teachers import require_teachers, teacher_logits


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, summed over classes, averaged over the batch."""
    t = temperature
    log_p = F.log_softmax(student_logits / t, dim=1)
    q = F.softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * (t * t)


def soft_targets(teacher_logits: list[torch.Tensor] | torch.Tensor, temperature: float) -> torch.Tensor:
    """The mean of the teachers' probabilities at temperature ``T`` (one teacher: its softened softmax)."""
    if isinstance(teacher_logits, torch.Tensor):
        teacher_logits = [teacher_logits]
    probs = [F.softmax(t.detach() / temperature, dim=1) for t in teacher_logits]
    return probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)


def kd_loss_to(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(target || softmax(student/T))``, summed over classes, averaged over the batch."""
    t = temperature
    log_p = F.log_softmax(student_logits / t, dim=1)
    return F.kl_div(log_p, target_probs.detach(), reduction="batchmean") * (t * t)


@dataclass
class KDOptions:
    temperature: float = option(4.0, "T: softening temperature (Hinton; KTAN Table I: 4)", min=0.0,
                                min_exclusive=True)
    weight: float = option(0.9, "weight of the T^2-scaled KL term to the teachers' mean probability", min=0.0)
    ce_weight: float | None = option(None, "weight of the cross-entropy with the labels (default: 1 - weight)",
                                     min=0.0)


class KnowledgeDistillation(Method):
    """``method=kd``: every trainable task member (``model``, ``peer_1..K``; never a teacher or a discriminator)
    learns ``ce_weight * CE(y) + weight * T^2 * KL(p_bar^t || p^s)``, where ``p_bar^t`` is the mean of the
    teachers' probabilities at temperature ``T`` (teachers forwarded once per step, without gradient). It
    supplies the task loss, so it does not combine with ``ls``."""

    name = "kd"
    Options = KDOptions
    provides_task_loss = True
    needs_teacher = True
    detection = True

    def setup(self, trainer) -> None:
        o = self.options
        if o.ce_weight is None and o.weight > 1:
            raise ConfigError(f"kd.weight={o.weight} > 1 makes the default CE weight 1 - weight negative; give "
                              f"kd.ce_weight too (e.g. kd.ce_weight=1)")
        if self.ce_weight == 0 and o.weight == 0:
            raise ConfigError("kd.weight=0 and a CE weight of 0 leave no loss; set one of them above 0")
        self._teachers = require_teachers(trainer, self.name)
        self._detector = trainer.task.model_loss
        if self._detector:  # the student's class logits and the proposals they score (module docstring)
            for m in trainer.task_members:
                check_detector(m.model, None, f"method=kd's student {m.name!r} ({trainer.config.model})")
                trainer.tap(m.name, CLS_SCORE)
                trainer.tap(m.name, ROI_POOL, inputs=True, detach=True)

    @property
    def ce_weight(self) -> float:
        o = self.options
        return 1.0 - o.weight if o.ce_weight is None else o.ce_weight

    def on_loss(self, trainer) -> None:
        members = trainer.task_members
        if not members:
            return
        o = self.options
        if self._detector:
            self._detector_loss(trainer, members)
            return
        for m in members:
            logits = trainer.outputs[m.name]
            target = soft_targets(teacher_logits(trainer, self._teachers, trainer.inputs_of(m.name)), o.temperature)
            if self.ce_weight:
                trainer.add_loss(m.name, "ce", self.ce_weight * F.cross_entropy(logits, trainer.targets_of(m.name)))
            if o.weight:
                trainer.add_loss(m.name, "kd", o.weight * kd_loss_to(logits, target, o.temperature))

    def _detector_loss(self, trainer, members) -> None:
        """A detector's own losses, its classification term weighted by ``ce_weight``, plus ``weight * T^2 *
        KL(p_bar^t || p^s)`` over its sampled proposals, the teachers scoring the student's proposals."""
        o = self.options
        for m in members:
            for name, value in trainer.task.losses(trainer.outputs[m.name]).items():
                weight = self.ce_weight if name == "classifier" else 1.0
                if weight:
                    trainer.add_loss(m.name, name, weight * value)
            if not o.weight:
                continue
            _, proposals, sizes = trainer.taps.input(m.name, ROI_POOL)
            with torch.no_grad():
                teachers = [teacher_proposal_logits(trainer.members[t].model, trainer.inputs_of(m.name), proposals,
                                                    sizes).float() for t in self._teachers]
            # in fp32: under bf16 the KL of two close distributions over hundreds of proposals rounds below zero
            student = trainer.taps.output(m.name, CLS_SCORE).float()
            trainer.add_loss(m.name, "kd", o.weight * kd_loss_to(student, soft_targets(teachers, o.temperature),
                                                                 o.temperature))


@dataclass
class CSKDOptions:
    temperature: float = option(4.0, "T: temperature that softens both softmaxes of the class-wise KL term",
                                min=0.0, min_exclusive=True)
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
