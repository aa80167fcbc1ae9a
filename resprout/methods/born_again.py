"""Born-Again networks (Furlanello, Lipton, Tschannen, Itti and Anandkumar, "Born Again Neural Networks", ICML 2018).

A sequence of *same-architecture* networks: generation 1 trains on the labels alone; generation ``g + 1`` is a
freshly initialized network of the same architecture, trained with the dual goal of predicting the labels and
matching the output distribution of generation ``g``, which is frozen (Sec. 3, "Sequence of Teaching Selves").
The Knowledge Evolution paper uses it as a baseline (Taha et al., CVPR 2021, Sec. 2 and Table 2, ``CE + BANs-N10``):
BANs initialize every student at random and pass knowledge through the logits, KE through the weights.

Choices (options ``ban.<name>``):

* the student's loss is the run's task loss (CE, or label smoothing with ``method=ban+ls``) plus
  ``weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (:func:`~resprout.methods.distill.kd_loss`).
  The defaults ``T = 1``, ``weight = 1`` are the paper's plain BAN objective (labels and teacher outputs, no
  temperature); ``T = 4`` with a larger weight is Hinton's KD between equal networks.
* the teacher of generation ``g + 1`` is generation ``g``'s weights at its last epoch (the paper trains each
  generation to the end and uses the result), frozen and in eval mode;
* ``first``: generation 1 is ``plain`` (the task loss alone: the paper's first teacher is trained on the labels),
  or ``teacher``: it is distilled, with the same loss, from the run's configured teacher (``teacher=DIR``, e.g. a
  bigger network; the paper's "DenseNets born again as ResNets" starts a chain from another architecture). Every
  generation is evaluated, so the per-generation metrics hold ``N_1`` next to ``N_2 .. N_G``;
* student ``g`` (``g >= 2``) is drawn by the run's model factory under the seed ``derive_seed(seed, 0xBA4, g)``,
  so it depends on the run's seed and the generation only (a resumed run draws the same network).

The frozen previous generation is a member named ``predecessor`` for the whole run (in generation 1 it holds the
initial weights and is never used), so a checkpoint written inside generation ``g`` holds the teacher that
generation is taught by and a resume continues with exactly it. The name is not ``teacher``: that one belongs to a
configured teacher (``first=teacher``, or ``method=ban+kd teacher=DIR``, where KD distils from it in every
generation). Not implemented: the paper's BAN ensembles (averaging every generation), CWTM and
DKPP variants.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from resprout.config import option
from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.distill import kd_loss
from resprout.seeding import derive_seed

PREDECESSOR = "predecessor"
_SEED_TAG = 0xBA4


def born_again_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
                    temperature: float = 1.0, weight: float = 1.0) -> torch.Tensor:
    """The loss of a Born-Again student (Furlanello et al. 2018, Sec. 3): cross-entropy on the labels plus
    ``weight * kd_loss(student, teacher, temperature)``; the teacher's logits are a fixed target (detached)."""
    return F.cross_entropy(student_logits, targets) + weight * kd_loss(student_logits, teacher_logits, temperature)


def student_seed(run_seed: int, generation: int) -> int:
    """The initialization seed of the student of ``generation`` (0-based; generation 0 is the run's own model)."""
    return derive_seed(run_seed, _SEED_TAG, generation) % (1 << 62)


@dataclass
class BANOptions:
    temperature: float = option(1.0, "T: softening temperature of the teacher and the student (the paper: 1)",
                                min=0.0, min_exclusive=True)
    weight: float = option(1.0, "weight of the distillation term added to the task loss", min=0.0)
    first: str = option("plain", "generation 1: plain (the task loss alone, as in the paper) or teacher (distilled "
                        "from the run's teacher=)", choices=("plain", "teacher"))
    member: str = option("model", "the member that is born again every generation")


class BornAgain(Method):
    """``method=ban generations=N``: every generation after the first is a fresh network taught by the previous one."""

    name = "ban"
    Options = BANOptions

    def __init__(self, options=None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self.needs_teacher = self.options.first == "teacher"  # resprout.methods.teachers builds teacher= then

    def setup(self, trainer) -> None:
        opts = self.options
        if opts.member not in trainer.members:
            raise ConfigError(f"ban.member={opts.member!r} is not a member of this run ({', '.join(trainer.members)})")
        if PREDECESSOR in trainer.members:
            raise ConfigError(f"method=ban adds its own member {PREDECESSOR!r} but this run has one already")
        if self.needs_teacher:
            from resprout.methods.teachers import require_teachers

            self.first_teachers = require_teachers(trainer, "ban ban.first=teacher")
        if trainer.config.generations < 2:
            raise ConfigError(f"method=ban needs generations >= 2 (generation 1 is the first teacher), got "
                              f"generations={trainer.config.generations}")
        if trainer.model_factory is None:
            raise ConfigError("method=ban draws a fresh network every generation; pass a model factory (e.g. "
                              "module=MyNet instead of module=MyNet())")
        student = trainer.members[opts.member].model
        trainer.add_member(PREDECESSOR, copy.deepcopy(student), trainable=False, evaluate=False, logits=True)

    def on_generation_start(self, trainer) -> None:
        g = trainer.generation
        if g == 0:
            return
        student = trainer.members[self.options.member].model
        teacher = trainer.members[PREDECESSOR].model
        with torch.no_grad():
            teacher.load_state_dict(student.state_dict())
            fresh = trainer.new_model(student_seed(trainer.config.seed, g))
            student.load_state_dict(fresh.state_dict())
        teacher.eval()  # the trainer puts trainable members in train mode; the teacher stays frozen

    def on_loss(self, trainer) -> None:
        name = self.options.member
        if not trainer.updates(name) or (trainer.generation == 0 and not self.needs_teacher):
            return
        if trainer.generation == 0:  # first=teacher: the mean probability of the configured teachers
            from resprout.methods.teachers import teacher_logits

            logits = teacher_logits(trainer, self.first_teachers)
            if len(logits) == 1:
                target = logits[0]
            else:  # kd_loss softens by T: log-probabilities times T have the teachers' mean probability at T
                probs = torch.stack([F.softmax(z / self.options.temperature, dim=1) for z in logits]).mean(0)
                target = probs.clamp_min(1e-12).log() * self.options.temperature
        else:
            target = trainer.output_of(PREDECESSOR)
        term = self.options.weight * kd_loss(trainer.outputs[name], target, self.options.temperature)
        trainer.add_loss(name, "ban", term)
