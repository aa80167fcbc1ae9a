"""Feature hints: the conv regressor between two feature maps, FitNet and attention transfer.

* :func:`regressor_kernel` / :func:`make_regressor`: the conv "teacher-to-student layer" of KTAN (Liu et al.,
  Sec. III-A): ``C_out`` channels and a kernel ``K`` solving ``(M_in + 2P - K) / S + 1 = M_out`` on each axis
  (FitNets' regressor, Romero et al. 2015, Sec. 2.2, is the same conv with ``P = 0, S = 1``). When no kernel fits
  (the source map is smaller than the target) the documented alternative is a transposed conv whose kernel solves
  ``(M_in - 1) * S - 2P + K = M_out``: it upsamples by learned weights instead of a fixed interpolation.
* :func:`hint_loss` and :class:`FitNet` (``method=fitnet``): Romero et al. 2015, Eq. (3): the student's hint layer
  through a trained conv regressor should match the teacher's guided layer. As in the KTAN paper's Table I
  (Sec. IV-A (4)) the hint is the student's last conv map and the guided layer the teacher's last conv map, in one
  stage: ``CE + weight * mean((r(f_s) - f_t)^2)``. FitNets' Eq. (3) is ``1/2 ||.||^2`` summed over the map; the mean
  over elements (KTAN's Eq. (2) normalization) keeps ``weight`` independent of the map size.
* :func:`attention_map`, :func:`at_loss` and :class:`AttentionTransfer` (``method=at``): Zagoruyko & Komodakis,
  "Paying More Attention to Attention", ICLR 2017, Sec. 3.1, Eq. (2) with ``p = 2``: ``Q = sum_c |A_c|^p``
  flattened and L2-normalized, loss ``1/2 * ||Q_s/||Q_s|| - Q_t/||Q_t|| ||_2`` per pair (batch mean), weight 0.05
  on the last conv maps as in KTAN's Table I (Sec. IV-A (5)); same-depth pairs are lists of layers.

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
from resprout.methods.teachers import require_teachers, teacher_feature

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


def at_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``1/2 * || Q_s/||Q_s|| - Q_t/||Q_t|| ||_2``, averaged over the batch (Zagoruyko & Komodakis, Eq. (2))."""
    size = tuple(min(a, b) for a, b in zip(student.shape[2:], teacher.shape[2:]))
    qs = attention_map(student, p, size)
    qt = attention_map(teacher.detach(), p, size)
    return 0.5 * (qs - qt).norm(dim=1).mean()


# -- feature paths -----------------------------------------------------------------------------------------------------
def _example(trainer) -> torch.Tensor:
    return torch.zeros(2, *trainer.input_shape, device=trainer.device)


def default_layer(trainer, member: str) -> str:
    """The last conv feature map's module path of ``member`` (see ``last_conv_feature``)."""
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
@dataclass
class FitNetOptions:
    weight: float = option(1.0, "weight of the hint loss (mean squared error after the regressor)", min=0.0)
    student_layer: str = option("", "module path of the student's hint layer (default: its last conv map)")
    teacher_layer: str = option("", "module path of the teacher's guided layer (default: its last conv map)")


class FitNet(Method):
    """``method=fitnet``: ``CE + weight * MSE(r(f_s), f_t)``; the regressor ``r`` (member ``regressor``, a conv
    from the student's map to the teacher's shape, :func:`make_regressor`) trains with the student."""

    name = "fitnet"
    Options = FitNetOptions
    needs_teacher = True

    def setup(self, trainer) -> None:
        o = self.options
        teachers = require_teachers(trainer, self.name)
        if len(teachers) > 1:
            raise ConfigError(f"method=fitnet hints from one teacher; got {len(teachers)} (kd can use several)")
        self._teacher = teachers[0]
        self._s = o.student_layer or default_layer(trainer, "model")
        self._t = o.teacher_layer or default_layer(trainer, self._teacher)
        trainer.tap("model", self._s)
        trainer.tap(self._teacher, self._t, detach=True)
        (s_shape,) = probe_features(trainer, "model", [self._s])
        (t_shape,) = probe_features(trainer, self._teacher, [self._t])
        trainer.add_member("regressor", make_regressor(s_shape, t_shape), manual=True, task=False, logits=False,
                           evaluate=False)

    def on_loss(self, trainer) -> None:
        if not trainer.updates("model"):
            return
        f_s = trainer.taps.output("model", self._s)
        f_t = teacher_feature(trainer, self._teacher, self._t)
        hint = hint_loss(trainer.members["regressor"](f_s), f_t)
        trainer.add_loss("model", "hint", self.options.weight * hint)


# -- attention transfer ------------------------------------------------------------------------------------------------
@dataclass
class ATOptions:
    weight: float = option(0.05, "beta: weight of the attention loss (KTAN Table I: 0.05)", min=0.0)
    p: float = option(2.0, "exponent of the attention map sum_c |A_c|^p", min=0.0, min_exclusive=True)
    student_layers: list = option([], "module paths of the student, comma-separated (default: its last conv map)")
    teacher_layers: list = option([], "module paths of the teacher, paired in order with student_layers "
                                  "(default: its last conv map)")


class AttentionTransfer(Method):
    """``method=at``: ``CE + weight * sum_j at_loss(student_j, teacher_j)`` over the layer pairs."""

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
        total = sum(at_loss(trainer.taps.output("model", s), teacher_feature(trainer, self._teacher, t), self.options.p)
                    for s, t in zip(self._s, self._t))
        trainer.add_loss("model", "at", self.options.weight * total)
