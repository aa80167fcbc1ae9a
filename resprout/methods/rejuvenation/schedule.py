"""The learning rate around a rejuvenation (``nr.lr``).

The official code does not spend the schedule on the sparsity phase: every epoch before the rejuvenation adds an
epoch and shifts the milestones, so the rate stays at its initial value while lambda grows, and the whole schedule
runs after the rebuild (notes: official behaviour A1). On ImageNet the paper "only does one time of neural
rejuvenation and reset[s] the epoch counter to 0 afterwards" (Sec. 4.1). A run here has a fixed number of epochs,
so ``nr.lr=hold`` does the same inside them:

* while a sparsity window is open (:mod:`.method`: at most ``nr.hold`` of the epochs that remain when it opens) the
  factor is held at 1 (after any warmup);
* when the window closes (its rejuvenation, or its deadline) the run's schedule restarts, squeezed into the epochs
  that remain (milestones keep their relative places). With several rejuvenations a new window opens at each
  rebuild, so the rate is held again until that window closes.

Why it matters on small data: with the run's own decaying schedule the same lambda shrinks the scales by
``lr * lambda`` per step, less and less, and the utilization stalls above T_r (ResNet-20, Fashion-MNIST: r stalled
at 0.35 against T_r = 0.25 in 20 epochs). ``nr.lr=run`` keeps the run's schedule untouched.
"""

from __future__ import annotations

import dataclasses


class RejuvenationSchedule:
    """Wraps a member's :class:`~resprout.engine.optim.Schedule`: factor 1 before ``start`` (the end of the open
    sparsity window, or the time the last one closed), the inner schedule restarted at ``start`` after it. A pure
    function of ``t``, so a resumed run gets the same rates."""

    def __init__(self, inner, start: float) -> None:
        self.inner, self.start = inner, start

    def factor(self, t: float, dt: float = 0.0) -> float:
        inner = self.inner
        if t < inner.warmup:
            return inner.factor(t, dt)
        start = max(self.start, inner.warmup)
        if t < start:
            return 1.0
        span = max(inner.epochs - start, 1e-12)
        rest = dataclasses.replace(inner, epochs=span, warmup=0.0,
                                   milestones=tuple(m * span / inner.epochs for m in inner.milestones))
        return rest.factor(t - start, dt)
