"""The base class of every training method.

A method is a small stateful object that reacts to trainer events (see :mod:`resprout.engine.events`). Its ideas
live in pure functions beside it (a loss, a mask, a mixing rule), so they can be called from any training loop;
the class only decides *when* to call them. Methods compose: a run may use several (``method=ke+ls``), and each
adds its own loss terms and reactions.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from resprout.config import fill_options
from resprout.engine.events import Event

if TYPE_CHECKING:
    from resprout.engine.members import UpdateStep
    from resprout.engine.context import RunContext


@dataclasses.dataclass
class NoOptions:
    """A method without options."""


class Method:
    """Subclass, set ``name`` (and ``Options``, a dataclass), and define the ``on_<event>`` handlers you need."""

    name: ClassVar[str] = "method"
    Options: ClassVar[type] = NoOptions
    #: whether this method supplies the task loss of every trainable member (CE, label smoothing, ...).
    #: A run without one gets plain cross-entropy added.
    provides_task_loss: ClassVar[bool] = False
    #: the batch sampler the method needs ("random", "pk", "class_pair"), or None for the default
    sampler: ClassVar[str | None] = None
    sampler_options: ClassVar[dict] = {}
    #: whether the method trains a detector (a detection run refuses the others; resprout.engine.detection)
    detection: ClassVar[bool] = False

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        if options is None:
            options = fill_options(self.Options, kwargs, prefix=self.name)
        elif kwargs:
            raise TypeError("pass either an options object or keyword options, not both")
        self.options = options

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def setup(self, ctx: RunContext) -> None:
        """Called once when the trainer is built (before any checkpoint is loaded): add members, taps and
        learning-rate modifiers here. Every handler receives the run's :class:`~resprout.engine.context.RunContext`
        (the contract: what a method may use, and the event order)."""

    def update_steps(self, ctx: RunContext) -> list[UpdateStep] | None:
        """The optimization steps of the current batch, in order (see :class:`~resprout.engine.members.UpdateStep`),
        or None for the default single step. Called once per batch, after the members' forward. ``on_loss`` runs
        once per step; ``ctx.update_step`` says which, and ``ctx.updates(member)`` whether it trains a
        member. What a step computes can be left in ``ctx.scratch`` for the steps after it."""
        return None

    def state_dict(self) -> dict:
        """Everything needed to continue after a resume: tensors, numbers, strings, lists and dicts only."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"


def handlers(methods: list[Method], event: Event) -> list:
    """The bound handlers of ``event`` that these methods define (base-class no-ops are skipped)."""
    out = []
    for m in methods:
        fn = getattr(type(m), event.handler, None)
        if fn is not None:
            out.append(getattr(m, event.handler))
    return out
