"""The one owner of the learning rates: every member's rate is computed and written here, at every step.

The rate of a member at a step is ``base * factor`` on every parameter group:

* ``base``: the member's own rate (``lr``, or ``member.<name>.lr``), then every *base modifier* registered for the
  member, in registration order: DSD's re-dense rate (``dsd.redense_lr`` times it), KTAN's adversarial rate,
  grafting's per-peer factors;
* ``factor``: the member's schedule (:class:`~resprout.engine.optim.Schedule`) at the position, then every
  *factor modifier*: Neural Rejuvenation's hold (``nr.lr=hold``) replaces it while a sparsity window is open.

A modifier is a function ``(member, position, value) -> value`` (``member`` a
:class:`~resprout.engine.members.Member`, ``position`` a :class:`Position`); it must be a pure function of the
position and of its method's state (what the method's ``state_dict`` holds), so that a resumed run recomputes the
rates of an uninterrupted one. The owner writes ``initial_lr`` (the base) and ``lr`` of every group, so a reader of
the optimizer sees what was used; nothing else writes them.

The float operations are those of the loop before this owner existed (``initial_lr * factor``, the modifiers' own
products in the same order), so the rates are bit-identical to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from resprout.errors import ConfigError

if TYPE_CHECKING:
    from resprout.engine.members import Member

STAGES = ("base", "factor")

Modifier = Callable[["Member", "Position", float], float]


@dataclass(frozen=True)
class Position:
    """Where the run is: ``generation`` and ``epoch`` (from 0), ``step`` of the epoch, and ``t`` the fractional
    epoch of the generation at the start of the step, ``dt`` one step in epochs (what a schedule reads)."""

    generation: int
    epoch: int
    step: int
    t: float
    dt: float = 0.0


class LearningRates:
    """Computes and writes every member's learning rate; methods register modifiers with :meth:`modify`."""

    def __init__(self, spec_lr: Callable[[Member], float]) -> None:
        self._spec_lr = spec_lr  # the member's configured rate (the run's, or member.<name>.lr)
        self._modifiers: dict[str, list[tuple[str, Modifier]]] = {s: [] for s in STAGES}

    def modify(self, member: str, fn: Modifier, *, stage: str = "base") -> None:
        """Register ``fn`` for member ``member``: ``stage="base"`` changes the base rate, ``stage="factor"`` the
        schedule's factor. Modifiers of a stage run in registration order (the order of the run's methods)."""
        if stage not in STAGES:
            raise ConfigError(f"bad learning-rate modifier stage {stage!r}; allowed: {', '.join(STAGES)}")
        self._modifiers[stage].append((member, fn))

    def base(self, member: Member, position: Position) -> float:
        """The base rate of ``member`` at ``position``: its configured rate, then the base modifiers."""
        lr = self._spec_lr(member)
        for name, fn in self._modifiers["base"]:
            if name == member.name:
                lr = fn(member, position, lr)
        return lr

    def factor(self, member: Member, position: Position) -> float:
        """The schedule factor of ``member`` at ``position``, then the factor modifiers."""
        factor = member.schedule.factor(position.t, position.dt)
        for name, fn in self._modifiers["factor"]:
            if name == member.name:
                factor = fn(member, position, factor)
        return factor

    def apply(self, member: Member, position: Position) -> float:
        """Write ``initial_lr`` (the base) and ``lr = base * factor`` into every group of the member's optimizer;
        returns the rate."""
        base, factor = self.base(member, position), self.factor(member, position)
        for g in member.optimizer.param_groups:
            g["initial_lr"] = base
            g["lr"] = base * factor
        return base * factor
