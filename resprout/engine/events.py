"""The events of a run, in the order the trainer fires them.

A method reacts to an event by defining ``on_<event>(self, ctx)``: ``ctx`` is the run's
:class:`~resprout.engine.context.RunContext` (the contract of what a method may use). The trainer calls only the
handlers that exist, in the order the methods were given. The whole loop, with every point a method can hook into::

    on_fit_start                      once per fit() call (also after a resume)
    for generation in range(generations):
        on_generation_start           re-initialize (KE), apply surgery, ...; then the trainer builds a fresh
                                      optimizer and schedule for every trainable member
        for epoch in range(epochs):
            on_epoch_start
            for step, (inputs, targets) in enumerate(batches):
                on_batch_start        ctx.inputs / ctx.targets may be replaced
                outputs = {name: member(inputs) for every fed member (trainable, not manual)}
                for update_step in the methods' update_steps (default: one step, every member, every term):
                    on_loss           add loss terms: ctx.add_loss(member, name, value), only for the
                                      members ctx.update_step names (ctx.updates(member))
                    backward of the sum of the step's terms, into the step's members only
                    on_after_backward gradients exist: add sub-gradients, mask gradients
                    the step's optimizers step (at the rates ctx.rates computes)
                    on_after_step     weights updated: re-apply masks, exchange weights
                on_batch_end
            on_epoch_end              the epoch's weights are final; evaluation follows
            (evaluate every member on val and test (every `eval_every` epochs and at the last), store metrics,
             keep the best)
            on_after_evaluate         ctx.last_eval holds this epoch's metrics (only after an evaluation)
            (write the checkpoint)
        on_generation_end             extra evaluations: ctx.log_generation(member, {...})
    on_fit_end

    on_member_resized                 whenever surgery changed a member's shapes (ctx.resized names it;
                                      ctx.replaying is true while a resume replays the history): recompute
                                      masks, re-register hooks. Feature taps are re-attached by the trainer.

A resumed run continues at the step after its checkpoint: events that already ran are not fired again, and
everything a method needs to continue lives in its ``state_dict``.
"""

from __future__ import annotations

from enum import Enum


class Event(str, Enum):
    FIT_START = "fit_start"
    GENERATION_START = "generation_start"
    EPOCH_START = "epoch_start"
    BATCH_START = "batch_start"
    LOSS = "loss"
    AFTER_BACKWARD = "after_backward"
    AFTER_STEP = "after_step"
    BATCH_END = "batch_end"
    EPOCH_END = "epoch_end"
    AFTER_EVALUATE = "after_evaluate"
    GENERATION_END = "generation_end"
    FIT_END = "fit_end"
    MEMBER_RESIZED = "member_resized"

    @property
    def handler(self) -> str:
        return f"on_{self.value}"
