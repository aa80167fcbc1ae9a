"""KTAN: Knowledge Transfer Adversarial Network (Liu, Liu, Ma, Jiang, Seok; arXiv 1810.08126), and its DLN.

No official code exists; the paper is the reference. The pieces, as pure functions and modules:

* the teacher-to-student regressor ``R`` (Sec. III-A): :func:`resprout.methods.hints.make_regressor` from the
  teacher's last conv map to the student's, pre-trained by :func:`pretrain_regressor` (Algorithm 1);
* :func:`feature_mse`, Eq. (2): the mean squared difference between ``R(m_t)`` and the student map ``m_s``;
* :class:`Discriminator` (Sec. III-C: "two convolution layers") and its losses :func:`discriminator_loss`
  (line 10) and :func:`adversarial_loss` (the student's term of line 11).

The methods: ``method=dln`` (the "directly learning network" of Table I: ``CE + beta * MSE``, no adversary) and
``method=ktan`` (Algorithm 2). ``kd+ktan`` composes (KD supplies the task loss; the adversary acts on feature maps
only, Sec. IV-A (8)).

Choices where the paper is open (each an option):

* **Algorithm 1's classifier** ``C`` reads ``R``'s output, which has the student's channel count ``C_s``, so the
  teacher's own FC (width ``C_t``) cannot read it unless ``C_s = C_t``. We use a fresh head of input width ``C_s``:
  global average pooling and a linear layer to the classes, trained with ``R`` by cross-entropy while the teacher is
  frozen; the head is discarded afterwards and ``R`` is frozen for the rest of the run. Steps:
  ``ktan.regressor_epochs`` (in epochs of the run's data), SGD at ``ktan.regressor_lr``.
* **The regressor's padding and stride** (Sec. III-A leaves ``P, S`` free): ``ktan.regressor_padding`` (0) and
  stride 1, i.e. ``K = M_t - M_s + 1``; a teacher map smaller than the student's uses a transposed conv.
* **The regressor's range**: a conv's output can be negative, a map taken after a ReLU (the default "last conv
  map" of most CNNs: ``relu3``, ``layer3``) cannot; the discriminator would then tell the two apart by sign alone
  and the MSE would chase values the student cannot reach. ``regressor_relu=auto`` (the default) puts a ReLU
  after the regressor when the student map is never negative on a random batch.
* **The discriminator**: conv(C_s -> hidden, k) + LeakyReLU(0.2) + conv(hidden -> 1, k), "same" padding: one logit per
  location ("region-to-region", Sec. III-C), each location a real/fake decision; losses are averaged over
  locations and the batch (the paper's ``sum_n``: a sum; the mean keeps ``alpha`` independent of the batch size).
* **The losses**: ``D(m)`` is the probability that ``m`` is a regressed teacher map. ``D`` minimizes
  ``-log D(R(m_t)) - log(1 - D(m_s))`` (Sec. III-C: "maximize the probability of correctly labeling feature maps").
  The student's ``L_adv`` (line 11, :func:`adversarial_loss`) is by default ``log(1 - min(D(m_s), 1/2))``
  (``generator_loss=capped``, resprout's choice): the paper's term (Sec. III-C, "log(1 - D(S(i))) (original
  objective function)", ``generator_loss=minimax``) without its push past D's equilibrium output 1/2. Why: in D's
  logit ``z`` the minimax gradient is ``-sigmoid(z)``: it fades where D is sure the map is the student's and is
  largest, and never fades, where D already takes it for the teacher's. On the Fashion-MNIST setting of issue #18
  (a CNN student trained from scratch, D winning on most locations) most of the adversarial gradient came from the
  few locations that fooled D, pushing them further along D's current direction until D turned, so D's accuracy
  on student maps swung and the student's cross-entropy stalled; capping the term at 1/2 removes that push and
  keeps the rest (``benchmarks/distillation.py`` measures both). ``generator_loss=nonsaturating`` is ``-log
  D(m_s)``, a reading of line 11's ``L_D(y_R(m_t), m_s)``: its gradient is largest where D is surest, everywhere
  at once when D wins, which broke the student's features in our runs.
* **Line 12's classifier step**: neither ``L_adv`` nor ``L_MSE`` depends on the classifier ``C``, so one backward of
  ``CE + alpha L_adv + beta MSE`` gives ``C`` exactly line 12's gradient ``dH/dC``; ``classifier_step=joint`` (the
  default) steps ``S`` and ``C`` together (``C``'s gradient taken before, not after, line 11 moved ``S``).
  ``classifier_step=after`` follows the order literally: the student step updates only the layers up to the tapped
  map (S), then a second forward of the updated student gives the CE that updates only the layers after it (C).
* **Phases** (Sec. III-C, Algorithm 2 lines 2-5): the first ``mse_epochs`` of training are CE + beta MSE (the ``k``
  pre-training iterations), the rest adversarial. The order within an adversarial batch is the algorithm's: D's
  step (line 10) on the batch's maps, then the student's step (line 11) against the updated D.
* **On a detector** (Sec. IV-B, Table II) the maps are FPN levels and Algorithm 1 trains ``R`` through the teacher's
  own detection heads instead of a classifier on labels
  (:func:`resprout.methods.detectors.pretrain_detector_regressor`); ``classifier_step=after`` is refused there.
* **The student** starts from scratch (the default: one run, comparable with the other methods' rows), or from a
  trained run (``ktan.student=DIR``): Algorithm 2 loads a pre-trained ``S, C``. ``adversarial_lr`` sets the
  student's rate from the first adversarial step (the paper, Sec. IV-A: "for adversarial training, we initialize
  the learning rate at 10^-2"; the run's schedule still scales it); by default the run's rate goes on. The paper's
  protocol is ``ktan.student=DIR ktan.adversarial_lr=0.01``; compare it with the student trained as many epochs.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from resprout.config import option
from resprout.engine.distributed import all_reduce_sum
from resprout.engine.members import UpdateStep
from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.detectors import (check_detector, check_same_maps, check_same_resize, detector_classes,
                                        pretrain_detector_regressor)
from resprout.methods.hints import default_layer, make_regressor, probe_features
from resprout.methods.teachers import load_run_model, require_teachers, teacher_feature

__all__ = ["DLN", "KTAN", "Discriminator", "adversarial_loss", "discriminator_loss", "feature_mse",
           "pretrain_regressor"]


# -- pure pieces -------------------------------------------------------------------------------------------------------
def feature_mse(regressed_teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Eq. (2): ``1/(c w h) sum (m_t - m_s)^2`` (here ``r = 1``: the regressor already matched the sizes),
    averaged over the batch. The teacher side carries no gradient."""
    if regressed_teacher.shape != student.shape:
        raise ValueError(f"feature_mse: regressed teacher map {tuple(regressed_teacher.shape)} and student map "
                         f"{tuple(student.shape)} differ")
    return F.mse_loss(student, regressed_teacher.detach())


@contextlib.contextmanager
def _trainable(regressor: nn.Module, trainer):
    """The regressor trainable during Algorithm 1, then frozen again in eval mode, with the taps its steps filled
    cleared (whatever Algorithm 1 raised)."""
    for p in regressor.parameters():
        p.requires_grad_(True)
    regressor.train()
    try:
        yield
    finally:
        for p in regressor.parameters():
            p.requires_grad_(False)
        regressor.eval()
        trainer.taps.clear()


class Discriminator(nn.Module):
    """Sec. III-C: two conv layers over a feature map, one real/fake logit per location."""

    def __init__(self, channels: int, hidden: int | None = None, kernel: int = 3) -> None:
        super().__init__()
        hidden = hidden or channels
        self.conv1 = nn.Conv2d(channels, hidden, kernel, padding=kernel // 2)
        self.act = nn.LeakyReLU(0.2)
        self.conv2 = nn.Conv2d(hidden, 1, kernel, padding=kernel // 2)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(m)))


def discriminator_loss(d_teacher: torch.Tensor, d_student: torch.Tensor) -> torch.Tensor:
    """D's loss (Alg. 2 line 10): ``-log D(R(m_t)) - log(1 - D(m_s))`` on logits, averaged over locations and
    the batch."""
    return (F.binary_cross_entropy_with_logits(d_teacher, torch.ones_like(d_teacher))
            + F.binary_cross_entropy_with_logits(d_student, torch.zeros_like(d_student)))


GENERATOR_LOSSES = ("capped", "minimax", "nonsaturating")


def adversarial_loss(d_student: torch.Tensor, mode: str = "capped") -> torch.Tensor:
    """The student's ``L_adv`` (Alg. 2 line 11) from D's logits ``z`` on the student maps, averaged over locations
    and the batch:

    * ``minimax``: ``log(1 - D(m_s)) = -softplus(z)`` (Sec. III-C, "the original objective function"). Its
      gradient in ``z`` is ``-sigmoid(z)``: nothing where D is sure the map is the student's, and the most where D
      already takes it for the teacher's, with no end (the term falls linearly in ``z``).
    * ``capped`` (resprout's default): the same term with ``D(m_s)`` capped at 1/2, ``log(1 - min(D(m_s), 1/2))``:
      the minimax gradient where D still tells the student apart, none where it no longer does. A location that
      fools D is not pushed further along D's current direction; 1/2 is D's output at the game's equilibrium.
    * ``nonsaturating``: ``-log D(m_s) = softplus(-z)``, a reading of line 11's ``L_D(y_R(m_t), m_s)``; its
      gradient is largest where D is surest.
    """
    if mode == "nonsaturating":
        return F.softplus(-d_student).mean()
    if mode == "minimax":
        return -F.softplus(d_student).mean()
    if mode == "capped":
        return -F.softplus(d_student.clamp(max=0.0)).mean()
    raise ValueError(f"adversarial_loss: mode must be one of {', '.join(GENERATOR_LOSSES)}, not {mode!r}")


def pretrain_regressor(teacher_features: Callable[[torch.Tensor], torch.Tensor], regressor: nn.Module,
                       head: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       optimizer: torch.optim.Optimizer,
                       reduce_grads: Callable[[list[torch.Tensor]], None] | None = None,
                       autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> list[float]:
    """Algorithm 1: for each batch, update ``regressor`` (and ``head``) by ``CE(y, head(R(G(x))))`` with the
    teacher part ``G`` frozen (``teacher_features`` is called without gradient). ``reduce_grads`` (data
    parallel) averages the gradients over processes before each step. ``autocast`` gives the context the
    forwards and the loss are computed in (the run's precision, ``trainer.autocast``); backward runs outside it.
    Returns the losses."""
    params = [p for m in (regressor, head) for p in m.parameters()]
    losses = []
    for x, y in batches:
        with autocast():
            with torch.no_grad():
                m_t = teacher_features(x)
            loss = F.cross_entropy(head(regressor(m_t)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if reduce_grads is not None:
            reduce_grads([p.grad for p in params if p.grad is not None])
        optimizer.step()
        losses.append(loss.item())
    return losses


def pooled_head(channels: int, num_classes: int) -> nn.Module:
    """Algorithm 1's classifier on the regressed map (width ``C_s``): global average pooling, then linear."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


# -- the methods -------------------------------------------------------------------------------------------------------
@dataclass
class DLNOptions:
    beta: float = option(0.5, "beta: weight of the feature MSE, Eq. (2) (KTAN Sec. IV-A (7): 0.5)", min=0.0)
    student_layer: str = option("", "module path of the student map m_s (default: its last conv map)")
    teacher_layer: str = option("", "module path of the teacher map m_t (default: its last conv map)")
    regressor_epochs: float = option(1.0, "Algorithm 1: epochs of regressor pre-training (0: keep it random)",
                                     min=0.0)
    regressor_lr: float = option(0.01, "Algorithm 1: SGD learning rate of the regressor and its head",
                                 min=0.0, min_exclusive=True)
    regressor_padding: int = option(0, "padding P of the regressor conv (its kernel solves "
                                    "(M_t + 2P - K)/S + 1 = M_s with S = 1)", min=0)
    regressor_relu: str = option("auto", "a ReLU after the regressor: always, never, or auto (when the student "
                                 "map is never negative, i.e. taken after a ReLU)", choices=("auto", "always", "never"))
    student: str = option("", "start the student from this run directory's weights (Algorithm 2 loads a "
                          "pre-trained student); empty: from scratch")


@dataclass
class KTANOptions(DLNOptions):
    alpha: float = option(0.6, "alpha: weight of the adversarial term (KTAN Sec. IV-A (7): 0.6)", min=0.0)
    mse_epochs: float = option(1.0, "Algorithm 2 lines 2-5: epochs of CE + beta MSE before adversarial "
                               "training (k iterations)", min=0.0)
    disc_hidden: int = option(0, "channels of the discriminator's first conv (0: the student map's)", min=0)
    disc_kernel: int = option(3, "kernel of both discriminator convs (odd)", min=1)
    generator_loss: str = option("capped", "the student's adversarial term: log(1 - min(D(m_s), 1/2)) (capped: "
                                 "no push where D is already fooled), log(1 - D(m_s)) (minimax, the paper's Sec. "
                                 "III-C) or -log D(m_s) (nonsaturating)", choices=GENERATOR_LOSSES)
    classifier_step: str = option("joint", "Algorithm 2 line 12: joint (one step over S and C) or after (S "
                                  "steps, then C on a second forward)", choices=("joint", "after"))
    adversarial_lr: float | None = option(None, "the student's learning rate from the first adversarial step on "
                                          "(the paper, Sec. IV-A: 1e-2; the run's schedule still scales it); "
                                          "default: the run's lr", min=0.0, min_exclusive=True)


class DLN(Method):
    """``method=dln``: ``CE + beta * MSE(R(m_t), m_s)`` with ``R`` pre-trained by Algorithm 1 and frozen."""

    name = "dln"
    Options = DLNOptions
    needs_teacher = True
    detection = True

    def __init__(self, options=None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self._regressor_done = False

    # -- setup ----------------------------------------------------------------------------------------------------
    def setup(self, trainer) -> None:
        o = self.options
        teachers = require_teachers(trainer, self.name)
        if len(teachers) > 1:
            raise ConfigError(f"method={self.name} transfers one teacher's feature map; got {len(teachers)} "
                              f"teachers (kd can use several)")
        self._teacher = teachers[0]
        student = trainer.members["model"].model
        self._detector = trainer.task.model_loss  # a detector: FPN levels, Algorithm 1 through the teacher's heads
        if self._detector:
            check_detector(student, None, f"method={self.name}'s student ({trainer.config.model})")
        self._classes = detector_classes(student) if self._detector else _classes(trainer, student)
        if self._detector:
            check_same_resize(student, trainer.members[self._teacher].model, self.name)
        if o.student:
            self._load_student(trainer, o.student)
        self._s = o.student_layer or default_layer(trainer, "model")
        self._t = o.teacher_layer or default_layer(trainer, self._teacher)
        trainer.tap("model", self._s)
        trainer.tap(self._teacher, self._t, detach=True)
        (self._s_shape,) = probe_features(trainer, "model", [self._s])
        (t_shape,) = probe_features(trainer, self._teacher, [self._t])
        if self._detector:
            check_same_maps(self.name, (self._s, self._s_shape), (self._t, t_shape))
            if o.regressor_epochs and t_shape[0] != self._s_shape[0]:
                raise ConfigError(f"{self.name}.regressor_epochs: Algorithm 1 on a detector trains R through the "
                                  f"teacher's own heads, which read its {t_shape[0]} channels; the student's map has "
                                  f"{self._s_shape[0]}: tap maps of the same width or set "
                                  f"{self.name}.regressor_epochs=0")
        regressor = make_regressor(t_shape, self._s_shape, padding=o.regressor_padding)
        if o.regressor_relu == "always" or (o.regressor_relu == "auto" and _nonnegative(trainer, "model", self._s)):
            regressor = nn.Sequential(regressor, nn.ReLU())
        # frozen member: in the checkpoint, never stepped by the run's optimizers (Algorithm 1 trains it apart)
        trainer.add_member("regressor", regressor, trainable=False, manual=True, task=False, logits=False,
                           evaluate=False)

    def _load_student(self, trainer, run_dir: str) -> None:
        model, cfg = load_run_model(run_dir, in_channels=trainer.input_shape[0], num_classes=self._classes,
                                    what=f"{self.name}.student", same_data_as=trainer.config.to_dict())
        try:
            trainer.members["model"].model.load_state_dict(model.state_dict())
        except RuntimeError as e:
            raise ConfigError(f"{self.name}.student {run_dir}: its network ({cfg['model']}) does not fit this "
                              f"run's model {trainer.config.model} ({str(e).splitlines()[0][:160]})") from None

    # -- Algorithm 1 ------------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer) -> None:
        if self._regressor_done:
            return
        steps = round(self.options.regressor_epochs * trainer.train_loader.steps(0, 0))
        if steps:
            self._pretrain(trainer, steps)
        self._regressor_done = True

    def _pretrain(self, trainer, steps: int) -> None:
        o = self.options
        regressor = trainer.members["regressor"].model
        teacher = trainer.members[self._teacher].model
        loader = trainer.train_loader
        per_epoch = loader.steps(0, 0)

        def features(x: torch.Tensor) -> torch.Tensor:
            teacher(x)
            return trainer.taps.output(self._teacher, self._t)

        def batches():
            for i in range(steps):
                yield loader.batch(0, i // per_epoch, i % per_epoch)

        reduce = None
        if trainer.dist.enabled:
            def reduce(grads: list[torch.Tensor]) -> None:
                for g in grads:
                    all_reduce_sum(g, trainer.dist).div_(trainer.dist.world_size)

        if self._detector:  # Algorithm 1 through the teacher's own heads (resprout.methods.detectors)
            with _trainable(regressor, trainer):
                opt = torch.optim.SGD(regressor.parameters(), lr=o.regressor_lr, momentum=0.9, weight_decay=1e-4)
                losses = pretrain_detector_regressor(teacher, self._t, regressor, batches(), opt, trainer.autocast)
            trainer.progress.message(f"{self.name}: regressor pre-trained for {steps} steps through the teacher's "
                                     f"heads (Algorithm 1 on a detector), loss {losses[0]:.3f} -> {losses[-1]:.3f}")
            return
        # its own random stream: the head's initialization must not move the student's
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(trainer.config.seed + 7919)
            head = pooled_head(self._s_shape[0], self._classes).to(trainer.device)
            with _trainable(regressor, trainer):
                params = list(regressor.parameters()) + list(head.parameters())
                opt = torch.optim.SGD(params, lr=o.regressor_lr, momentum=0.9, weight_decay=1e-4)
                losses = pretrain_regressor(features, regressor, head, batches(), opt, reduce, trainer.autocast)
        trainer.progress.message(f"{self.name}: regressor pre-trained for {steps} steps (Algorithm 1), CE "
                                 f"{losses[0]:.3f} -> {losses[-1]:.3f}")

    # -- the loss terms ---------------------------------------------------------------------------------------------
    def _maps(self, trainer) -> tuple[torch.Tensor, torch.Tensor]:
        """(R(m_t), m_s) of this batch; R(m_t) computed once per batch, without gradient."""
        if "ktan_rt" not in trainer.scratch:
            with torch.no_grad():
                trainer.scratch["ktan_rt"] = trainer.members["regressor"].model(
                    teacher_feature(trainer, self._teacher, self._t))
        return trainer.scratch["ktan_rt"], trainer.taps.output("model", self._s)

    def on_loss(self, trainer) -> None:
        if trainer.updates("model"):
            rt, ms = self._maps(trainer)
            trainer.add_loss("model", "mse", self.options.beta * feature_mse(rt, ms))

    def state_dict(self) -> dict:
        return {"regressor_done": self._regressor_done}

    def load_state_dict(self, state: dict) -> None:
        self._regressor_done = bool(state.get("regressor_done", False))


def _nonnegative(trainer, member: str, path: str) -> bool:
    """Whether ``member``'s map at ``path`` is never negative on a random batch (it comes after a ReLU)."""
    model = trainer.members[member].model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, *trainer.input_shape, generator=g).to(trainer.device)
    modes = {id(m): m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(x)
        return bool(trainer.taps.output(member, path).min() >= 0)
    finally:
        for m in model.modules():
            m.train(modes[id(m)])
        trainer.taps.clear()


def _classes(trainer, model: nn.Module) -> int:
    """The class count of the run: the width of the student's logits (one eval forward of zeros)."""
    modes = {id(m): m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            return int(model(torch.zeros(2, *trainer.input_shape, device=trainer.device)).shape[1])
    finally:
        for m in model.modules():
            m.train(modes[id(m)])


class KTAN(DLN):
    """``method=ktan`` (Algorithm 2): k steps of ``CE + beta MSE``, then per batch D's step (line 10) and the
    student's ``CE + alpha L_adv + beta MSE`` (line 11, with line 12, see ``classifier_step``). The discriminator is
    the member ``discriminator`` with its own optimizer (lr 1e-2, weight decay 1e-4 as the paper's adversarial
    settings; ``member.discriminator.*`` overrides)."""

    name = "ktan"
    Options = KTANOptions

    def setup(self, trainer) -> None:
        super().setup(trainer)
        o = self.options
        if self._detector and o.classifier_step == "after":
            raise ConfigError("ktan.classifier_step=after re-runs the student's classifier on the batch's labels; a "
                              "detector computes its own losses: use classifier_step=joint on detection data")
        if o.disc_kernel % 2 == 0:
            raise ConfigError(f"bad value for ktan.disc_kernel: {o.disc_kernel} (must be odd, so maps keep their size)")
        disc = Discriminator(self._s_shape[0], o.disc_hidden or None, o.disc_kernel)
        trainer.add_member("discriminator", disc, manual=True, task=False, logits=False, evaluate=False,
                           optim={"lr": 1e-2, "weight_decay": 1e-4})
        self._classifier: list[nn.Parameter] | None = None
        if o.adversarial_lr is not None:
            trainer.rates.modify("model", functools.partial(self.adversarial_rate, trainer))

    def _global_step(self, trainer) -> int:
        per_epoch = trainer.train_loader.steps(0, 0)
        return (trainer.generation * trainer.config.epochs + trainer.epoch) * per_epoch + trainer.step

    def _adversarial_now(self, trainer) -> bool:
        k = round(self.options.mse_epochs * trainer.train_loader.steps(0, 0))
        return self._global_step(trainer) >= k

    def adversarial_rate(self, trainer, member, position, lr: float) -> float:
        """The base-rate modifier (:mod:`resprout.engine.rates`) of ``ktan.adversarial_lr``: the student's base
        rate from the first adversarial step on (Sec. IV-A: 1e-2); the run's schedule still scales it."""
        return self.options.adversarial_lr if self._adversarial_now(trainer) else lr

    def update_steps(self, trainer) -> list[UpdateStep]:
        students = tuple(m.name for m in trainer.trainable if m.name != "discriminator")
        steps = [UpdateStep("student", students)]
        if self._adversarial_now(trainer):
            steps.insert(0, UpdateStep("discriminator", ("discriminator",), terms=("disc",)))
        return steps

    def on_loss(self, trainer) -> None:
        step = trainer.update_step.name if trainer.update_step else None
        o = self.options
        if step == "discriminator":
            rt, ms = self._maps(trainer)
            # one forward of both halves: a data-parallel D is called once per step
            d = trainer.members["discriminator"](torch.cat([rt, ms.detach()]))
            trainer.add_loss("discriminator", "disc", discriminator_loss(d[:len(rt)], d[len(rt):]))
        elif trainer.updates("model"):
            super().on_loss(trainer)
            if self._adversarial_now(trainer) and o.alpha:
                _, ms = self._maps(trainer)
                # the inner module: the student's term reaches D's input, never D's weights (the step's backward
                # goes into the student only) and never D's data-parallel reducer
                d_s = trainer.members["discriminator"].model(ms)
                trainer.add_loss("model", "adv", o.alpha * adversarial_loss(d_s, o.generator_loss))

    # -- classifier_step=after: line 11 moves S only, then line 12 moves C only ----------------------------------------
    def _after(self, trainer) -> bool:
        step = trainer.update_step.name if trainer.update_step else None
        return self.options.classifier_step == "after" and step == "student" and self._adversarial_now(trainer)

    def _classifier_params(self, trainer) -> list[nn.Parameter]:
        """C: the student's parameters that do not reach the tapped map m_s (found once by autograd)."""
        if self._classifier is None:
            model = trainer.members["model"].model
            params = [p for p in model.parameters() if p.requires_grad]
            modes = {id(m): m.training for m in model.modules()}
            model.eval()
            try:
                model(torch.zeros(2, *trainer.input_shape, device=trainer.device))
                ms = trainer.taps.output("model", self._s)
                grads = torch.autograd.grad(ms.sum(), params, allow_unused=True)
            finally:
                for m in model.modules():
                    m.train(modes[id(m)])
            self._classifier = [p for p, g in zip(params, grads) if g is None]
            if not self._classifier:
                raise ConfigError("ktan.classifier_step=after: every student parameter reaches the tapped map; "
                                  "tap an earlier layer or use classifier_step=joint")
        return self._classifier

    def on_after_backward(self, trainer) -> None:
        if self._after(trainer):
            for p in self._classifier_params(trainer):
                p.grad = None  # an optimizer skips a parameter without gradient: line 11 steps S only

    def on_after_step(self, trainer) -> None:
        if not self._after(trainer):
            return
        # line 12: a second forward of the updated student; CE into C only (S's gradients are dropped). The inner
        # module, with C's gradients averaged by hand under data parallelism (DDP would wait for S's too).
        member = trainer.members["model"]
        c = self._classifier_params(trainer)
        with trainer.autocast():
            ce = F.cross_entropy(member.model(trainer.inputs), trainer.targets)
        member.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(ce, inputs=c)
        if trainer.dist.enabled:
            for p in c:
                all_reduce_sum(p.grad, trainer.dist).div_(trainer.dist.world_size)
        member.optimizer.step()  # at the rate the student step set for this batch
