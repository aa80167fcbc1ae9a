"""Feature hints: the conv regressor between two feature maps, FitNet and attention transfer.

* :func:`regressor_kernel` / :func:`make_regressor`: the conv "teacher-to-student layer" of KTAN (Liu et al.,
  Sec. III-A): ``C_out`` channels and a kernel ``K`` solving ``(M_in + 2P - K) / S + 1 = M_out`` on each axis
  (FitNets' regressor, Romero et al. 2015, Sec. 2.2, is the same conv with ``P = 0, S = 1``). When no kernel fits
  (the source map is smaller than the target) the documented alternative is a transposed conv whose kernel solves
  ``(M_in - 1) * S - 2P + K = M_out``: it upsamples by learned weights instead of a fixed interpolation.
* :func:`hint_loss` and :class:`FitNet` (``method=fitnet``): Romero et al., "FitNets: Hints for Thin Deep Nets",
  ICLR 2015. The *hint* is the teacher's layer, the *guided* layer the student's (Sec. 2.2); Eq. (3): the guided
  layer through a conv regressor should match the hint. By default the two stages of Sec. 2.3 / Algorithm 1:
  stage 1 trains the student up to its guided layer and the regressor on the hint loss alone, stage 2 the whole
  student on Eq. (2), ``CE + lambda * H(P_T^tau, P_S^tau)`` (:func:`relaxed_kl`), ``lambda`` annealed from 4 to 1
  and ``tau = 3`` as in the authors' CIFAR-10 setting. ``fitnet.stages=1`` is the one-stage reading of KTAN's
  Table I (Sec. IV-A (4)): ``CE + weight * hint`` throughout. Both use the last conv maps by default (KTAN:
  "the last convolution layer's output"). FitNets' Eq. (3) is ``1/2 ||.||^2`` summed over the map; the mean over
  elements (KTAN's Eq. (2) normalization) keeps ``weight`` independent of the map size.
* :func:`attention_map`, :func:`at_loss` and :class:`AttentionTransfer` (``method=at``): Zagoruyko & Komodakis,
  "Paying More Attention to Attention", ICLR 2017, Sec. 3.1: ``Q = sum_c |A_c|^p`` flattened and L2-normalized
  (``p = 2``). By default the authors' code: ``beta * mean((q_s - q_t)^2)`` over the batch and positions, summed
  over the layer pairs, ``beta = 1000`` (Sec. 3.1: "beta = 10^3 divided by number of elements in attention map and
  batch size"). ``at.form=ktan`` keeps the setting resprout gave KTAN's Table I (Sec. IV-A (5)): Eq. (2)'s term
  read literally, ``1/2 ||q_s - q_t||_2`` per image (not squared), weight 0.05: a far
  weaker term. The last conv maps by default; same-depth pairs are lists of layers.

Feature maps are read by forward hooks (``trainer.tap``); :func:`~resprout.engine.taps.last_conv_feature` finds the
default layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resprout.config import option
from resprout.engine.method import Method
from resprout.engine.taps import last_conv_feature
from resprout.errors import ConfigError
from resprout.methods.detectors import (CLS_SCORE, FPN_LEVEL, ROI_POOL, check_detector, check_same_maps,
                                        check_same_resize, teacher_proposal_logits)
from resprout.methods.distill import kd_loss
from resprout.methods.teachers import require_teachers, teacher_feature, teacher_logits

__all__ = ["AttentionTransfer", "FitNet", "at_loss", "attention_map", "hint_loss", "make_regressor",
           "probe_features", "regressor_kernel", "transposed_kernel"]


# -- the regressor -----------------------------------------------------------------------------------------------------
def regressor_kernel(m_in: int, m_out: int, stride: int = 1, padding: int = 0) -> int:
    """The kernel ``K`` of a conv that maps a map of size ``m_in`` to ``m_out`` on one axis:
    ``(m_in + 2P - K) / S + 1 = m_out`` (KTAN Sec. III-A), i.e. ``K = m_in + 2P - S (m_out - 1)``.
    Raises ``ValueError`` when no kernel ``K >= 1`` fits (the map would have to grow)."""
    if min(m_in, m_out, stride) < 1 or padding < 0:
        raise ValueError(f"sizes and stride must be >= 1 and padding >= 0, got {m_in}, {m_out}, {stride}, {padding}")
    k = m_in + 2 * padding - stride * (m_out - 1)
    if k < 1:
        raise ValueError(f"no conv kernel maps size {m_in} to {m_out} with stride {stride} and padding {padding}")
    return k


def transposed_kernel(m_in: int, m_out: int, stride: int = 1, padding: int = 0) -> int:
    """The kernel of a transposed conv mapping size ``m_in`` to ``m_out``: ``(m_in - 1) S - 2P + K = m_out``."""
    k = m_out - (m_in - 1) * stride + 2 * padding
    if k < 1:
        raise ValueError(f"no transposed-conv kernel maps size {m_in} to {m_out} with stride {stride} and "
                         f"padding {padding}")
    return k


def make_regressor(in_shape: tuple[int, ...], out_shape: tuple[int, ...], *, stride: int = 1,
                   padding: int = 0) -> nn.Module:
    """A conv from maps of shape ``in_shape`` (C, H, W) to ``out_shape``: :func:`regressor_kernel` per axis, or the
    transposed conv of :func:`transposed_kernel` on the axes where the input is the smaller (then stride 1 and no
    padding on every axis, so both axes use the transposed formula)."""
    if len(in_shape) != 3 or len(out_shape) != 3:
        raise ConfigError(f"the regressor maps 2-D feature maps (C, H, W); got {tuple(in_shape)} -> "
                          f"{tuple(out_shape)}")
    c_in, c_out = in_shape[0], out_shape[0]
    try:
        k = tuple(regressor_kernel(a, b, stride, padding) for a, b in zip(in_shape[1:], out_shape[1:]))
        return nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding)
    except ValueError:
        pass
    try:
        k = tuple(transposed_kernel(a, b) for a, b in zip(in_shape[1:], out_shape[1:]))
    except ValueError:
        raise ConfigError(f"no conv or transposed conv maps {tuple(in_shape)} to {tuple(out_shape)} (one axis "
                          f"grows, the other shrinks); tap layers of compatible sizes") from None
    return nn.ConvTranspose2d(c_in, c_out, k)


# -- losses ------------------------------------------------------------------------------------------------------------
def hint_loss(student_regressed: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over every element (FitNets Eq. (3) up to the ``1/2`` and the normalization)."""
    return F.mse_loss(student_regressed, teacher_map.detach())


def attention_map(features: torch.Tensor, p: float = 2.0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Zagoruyko & Komodakis Sec. 3.1: ``Q = sum_c |A_c|^p`` (N, H*W), L2-normalized per image. ``size``: average-
    pool the map to this spatial size first (pairs of different resolutions are compared at the smaller one)."""
    q = features.abs().pow(p).sum(dim=1, keepdim=True)
    if size is not None and tuple(q.shape[2:]) != tuple(size):
        q = F.adaptive_avg_pool2d(q, size)
    return F.normalize(q.flatten(1), dim=1)


AT_FORMS = ("official", "ktan")
#: the default weight of each form: the official code's ``beta = 1e3``; KTAN's Table I (Sec. IV-A (5)) 0.05
AT_WEIGHTS = {"official": 1000.0, "ktan": 0.05}


def at_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0, form: str = "official") -> torch.Tensor:
    """The attention-transfer term of one layer pair, between the normalized maps ``q = Q/||Q||`` of
    :func:`attention_map` (compared at the smaller resolution of the two).

    * ``official``: ``mean((q_s - q_t)^2)`` over the batch and the ``H*W`` positions, the form of the authors'
      code (the paper, Sec. 3.1: ``beta = 1e3`` "divided by number of elements in attention map and batch size");
    * ``ktan``: ``1/2 ||q_s - q_t||_2`` per image, averaged over the batch: Eq. (2)'s term read literally (p = 2
      norm, not squared), the form resprout gave KTAN's Table I setting (weight 0.05).
    """
    size = tuple(min(a, b) for a, b in zip(student.shape[2:], teacher.shape[2:]))
    qs = attention_map(student, p, size)
    qt = attention_map(teacher.detach(), p, size)
    if form == "official":
        return (qs - qt).pow(2).mean()
    if form == "ktan":
        return 0.5 * (qs - qt).norm(dim=1).mean()
    raise ValueError(f"at_loss: form must be one of {', '.join(AT_FORMS)}, not {form!r}")


# -- feature paths -----------------------------------------------------------------------------------------------------
def _example(trainer) -> torch.Tensor:
    return torch.zeros(2, *trainer.input_shape, device=trainer.device)


def default_layer(trainer, member: str) -> str:
    """The last conv feature map's module path of ``member`` (see ``last_conv_feature``); on a detector, its finest
    FPN level (:data:`resprout.methods.detectors.FPN_LEVEL`)."""
    if trainer.task.model_loss:
        return FPN_LEVEL
    return last_conv_feature(trainer.members[member].model, _example(trainer))


def probe_features(trainer, member: str, paths: list[str]) -> list[tuple[int, ...]]:
    """The (C, H, W) shapes of the tapped ``paths`` of ``member`` on this run's images (one eval forward of zeros,
    train/eval modes restored); the paths must be tapped already."""
    model = trainer.members[member].model
    modes = {id(m): m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(_example(trainer))
        shapes = []
        for path in paths:
            out = trainer.taps.output(member, path)
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ConfigError(f"feature {member}:{path!r} is {got}, not a 2-D feature map (N, C, H, W)")
            shapes.append(tuple(out.shape[1:]))
        return shapes
    finally:
        for m in model.modules():
            m.train(modes[id(m)])
        trainer.taps.clear()


def _layers(value: list | str) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    return [str(v).strip() for v in items if str(v).strip()]


# -- FitNet ------------------------------------------------------------------------------------------------------------
def fitnet_lambda(start: float, end: float, progress: float) -> float:
    """FitNets Eq. (2)'s ``lambda`` at ``progress`` (0..1) through stage 2: linear from ``start`` to ``end`` (the
    authors annealed it from 4 to 1 over the epochs of stage 2)."""
    return start + (end - start) * min(max(progress, 0.0), 1.0)


def relaxed_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """FitNets Eq. (2)'s soft term ``H(P_T^tau, P_S^tau)`` as ``KL(P_T^tau || P_S^tau)`` (the same gradient: they
    differ by the teacher's entropy), batch mean, without Hinton's ``tau^2`` factor (Eq. (2) has none)."""
    return kd_loss(student_logits, teacher_logits, temperature) / (temperature * temperature)


@dataclass
class FitNetOptions:
    stages: int = option(2, "2: Romero et al.'s two stages (the student up to its guided layer and the regressor "
                         "learn the hint alone, then the whole student learns KD); 1: one stage, CE + weight * hint",
                         choices=(1, 2))
    hint_fraction: float = option(0.25, "stages=2: the share of the run's steps spent in stage 1", min=0.0,
                                  max=1.0, min_exclusive=True)
    weight: float = option(1.0, "weight of the hint loss (mean squared error after the regressor)", min=0.0,
                           min_exclusive=True)
    temperature: float = option(3.0, "stages=2, stage 2: tau, the relaxation of Eq. (2) (the authors' CIFAR "
                                "setting: 3)", min=0.0, min_exclusive=True)
    kd_weight: float = option(4.0, "stages=2, stage 2: lambda of Eq. (2) when stage 2 starts (the authors: 4)",
                              min=0.0)
    kd_weight_end: float = option(1.0, "stages=2, stage 2: lambda at the end, reached linearly (the authors: 1)",
                                  min=0.0)
    student_layer: str = option("", "module path of the student's guided layer (default: its last conv map)")
    teacher_layer: str = option("", "module path of the teacher's hint layer (default: its last conv map)")


class FitNet(Method):
    """``method=fitnet``. The regressor ``r`` (member ``regressor``, a conv from the student's guided map to the
    teacher's hint shape, :func:`make_regressor`) trains with the student.

    * ``stages=2`` (Romero et al., Sec. 2.3, Algorithm 1): for the first ``hint_fraction`` of the run's steps the
      loss is ``weight * MSE(r(guided), hint)`` alone, so only the student's layers up to the guided layer and the
      regressor move (stage 1); then the student's optimizer state is cleared (stage 2 is a new training from the
      stage-1 weights) and the whole student learns Eq. (2), ``CE + lambda * relaxed_kl``, with ``lambda`` annealed
      linearly from ``kd_weight`` to ``kd_weight_end``. This method then supplies the task loss.
    * ``stages=1`` (KTAN's Table I reading): ``CE + weight * MSE(r(guided), hint)`` throughout.

    On a detector (KTAN Sec. IV-B, Table II's FitNet row) the guided layer and the hint are FPN levels (by default
    the finest, :data:`~resprout.methods.detectors.FPN_LEVEL`), both detectors resizing their images alike
    (:func:`~resprout.methods.detectors.check_same_resize`) so that the maps match location by location; the task
    loss is the detector's own losses, and stage 2's soft term is Eq. (2)'s relaxed KL on the box head's class
    logits of the student's sampled proposals, scored by the teacher on those same proposals
    (:func:`~resprout.methods.detectors.teacher_proposal_logits`, as for ``kd``)."""

    name = "fitnet"
    Options = FitNetOptions
    needs_teacher = True
    detection = True

    @property
    def provides_task_loss(self) -> bool:  # stage 2's Eq. (2) holds the cross-entropy
        return self.options.stages == 2

    def setup(self, trainer) -> None:
        o = self.options
        teachers = require_teachers(trainer, self.name)
        if len(teachers) > 1:
            raise ConfigError(f"method=fitnet hints from one teacher; got {len(teachers)} (kd can use several)")
        self._teacher = teachers[0]
        self._s = o.student_layer or default_layer(trainer, "model")
        self._t = o.teacher_layer or default_layer(trainer, self._teacher)
        self._detector = trainer.task.model_loss
        if self._detector:
            check_detector(trainer.members["model"].model, None, f"method=fitnet's student ({trainer.config.model})")
            check_same_resize(trainer.members["model"].model, trainer.members[self._teacher].model, self.name)
            if o.stages == 2:  # stage 2's soft term: the class logits of the student's proposals
                trainer.tap("model", CLS_SCORE)
                trainer.tap("model", ROI_POOL, inputs=True, detach=True)
        trainer.tap("model", self._s)
        trainer.tap(self._teacher, self._t, detach=True)
        (s_shape,) = probe_features(trainer, "model", [self._s])
        (t_shape,) = probe_features(trainer, self._teacher, [self._t])
        if self._detector:
            check_same_maps(self.name, (self._s, s_shape), (self._t, t_shape))
        trainer.add_member("regressor", make_regressor(s_shape, t_shape), manual=True, task=False, logits=False,
                           evaluate=False)
        if o.stages == 2:
            self._total = trainer.config.generations * trainer.config.epochs * trainer.train_loader.steps(0, 0)
            self._hint_steps = round(o.hint_fraction * self._total)
            if not 0 < self._hint_steps < self._total:
                raise ConfigError(f"fitnet.hint_fraction={o.hint_fraction} of this run's {self._total} steps leaves "
                                  f"stage {1 if self._hint_steps == 0 else 2} empty; change it, or use "
                                  f"fitnet.stages=1")

    def _global_step(self, trainer) -> int:
        per_epoch = trainer.train_loader.steps(0, 0)
        return (trainer.generation * trainer.config.epochs + trainer.epoch) * per_epoch + trainer.step

    def stage(self, trainer) -> int:
        """1 or 2: the stage of the current step."""
        if self.options.stages == 1:
            return 1
        return 1 if self._global_step(trainer) < self._hint_steps else 2

    def on_batch_start(self, trainer) -> None:
        if self.options.stages == 2 and self._global_step(trainer) == self._hint_steps:
            # stage 2 is a new training of the whole student from the stage-1 weights: no momentum carried over
            trainer.members["model"].optimizer.state.clear()

    def on_loss(self, trainer) -> None:
        if not trainer.updates("model"):
            return
        o = self.options
        if o.stages == 2 and self.stage(trainer) == 2:
            progress = (self._global_step(trainer) - self._hint_steps) / max(1, self._total - self._hint_steps - 1)
            lam = fitnet_lambda(o.kd_weight, o.kd_weight_end, progress)
            if self._detector:  # the detector's own losses, and Eq. (2)'s soft term over its proposals
                for name, value in trainer.task.losses(trainer.outputs["model"]).items():
                    trainer.add_loss("model", name, value)
                _, proposals, sizes = trainer.taps.input("model", ROI_POOL)
                with torch.no_grad():
                    t_logits = teacher_proposal_logits(trainer.members[self._teacher].model, trainer.inputs,
                                                       proposals, sizes).float()
                student = trainer.taps.output("model", CLS_SCORE).float()  # fp32, as kd's (distill.py)
                trainer.add_loss("model", "kd", lam * relaxed_kl(student, t_logits, o.temperature))
                return
            (t_logits,) = teacher_logits(trainer, [self._teacher])
            logits = trainer.outputs["model"]
            # Eq. (2): H(y, P_S) + lambda H(P_T^tau, P_S^tau)
            trainer.add_loss("model", "ce", F.cross_entropy(logits, trainer.targets))
            trainer.add_loss("model", "kd", lam * relaxed_kl(logits, t_logits, o.temperature))
            return
        f_s = trainer.taps.output("model", self._s)
        f_t = teacher_feature(trainer, self._teacher, self._t)
        hint = hint_loss(trainer.members["regressor"](f_s), f_t)
        trainer.add_loss("model", "hint", o.weight * hint)


# -- attention transfer ------------------------------------------------------------------------------------------------
@dataclass
class ATOptions:
    form: str = option("official", "the term of a layer pair: official (mean of the squared difference of the "
                       "normalized maps, the authors' code) or ktan (1/2 the L2 norm of it, resprout's KTAN Table I "
                       "setting)", choices=AT_FORMS)
    weight: float | None = option(None, "beta: weight of the attention term (default: 1000 with form=official, "
                                  "the authors' code; 0.05 with form=ktan, KTAN Table I)", min=0.0)
    p: float = option(2.0, "exponent of the attention map sum_c |A_c|^p", min=0.0, min_exclusive=True)
    student_layers: list = option([], "module paths of the student, comma-separated (default: its last conv map)")
    teacher_layers: list = option([], "module paths of the teacher, paired in order with student_layers "
                                  "(default: its last conv map)")


class AttentionTransfer(Method):
    """``method=at``: ``CE + beta * sum_j at_loss(student_j, teacher_j)`` over the layer pairs (``form`` and its
    ``beta``: :data:`AT_WEIGHTS` unless ``weight`` is given)."""

    name = "at"
    Options = ATOptions
    needs_teacher = True

    def setup(self, trainer) -> None:
        o = self.options
        teachers = require_teachers(trainer, self.name)
        if len(teachers) > 1:
            raise ConfigError(f"method=at transfers one teacher's attention; got {len(teachers)} (kd can use several)")
        self._teacher = teachers[0]
        self._s = _layers(o.student_layers) or [default_layer(trainer, "model")]
        self._t = _layers(o.teacher_layers) or [default_layer(trainer, self._teacher)]
        if len(self._s) != len(self._t):
            raise ConfigError(f"at.student_layers names {len(self._s)} layers and at.teacher_layers "
                              f"{len(self._t)}; they are paired in order, so give as many of each")
        for path in self._s:
            trainer.tap("model", path)
        for path in self._t:
            trainer.tap(self._teacher, path, detach=True)
        probe_features(trainer, "model", self._s)  # refuses maps that are not (N, C, H, W)
        probe_features(trainer, self._teacher, self._t)

    def on_loss(self, trainer) -> None:
        if not trainer.updates("model"):
            return
        o = self.options
        total = sum(at_loss(trainer.taps.output("model", s), teacher_feature(trainer, self._teacher, t), o.p, o.form)
                    for s, t in zip(self._s, self._t))
        trainer.add_loss("model", "at", self.beta * total)

    @property
    def beta(self) -> float:
        o = self.options
        return AT_WEIGHTS[o.form] if o.weight is None else o.weight
