"""The events of a run, in the order the trainer fires them.

A method reacts to an event by defining ``on_<event>(self, trainer)``; the trainer calls only the handlers that
exist, in the order the methods were given. The whole loop, with every point a method can hook into::

    on_fit_start                      once per fit() call (also after a resume)
    for generation in range(generations):
        on_generation_start           re-initialize (KE), apply surgery, ...; then the trainer builds a fresh
                                      optimizer and schedule for every trainable member
        for epoch in range(epochs):
            on_epoch_start
            for step, (inputs, targets) in enumerate(batches):
                on_batch_start        trainer.inputs / trainer.targets may be replaced
                outputs = {name: member(inputs) for every trainable member}
                on_loss               add loss terms: trainer.add_loss(member, name, value)
                backward of the sum of all terms
                on_after_backward     gradients exist: add sub-gradients, mask gradients
                every optimizer steps
                on_after_step         weights updated: re-apply masks, exchange weights
                on_batch_end
            on_epoch_end              the epoch's weights are final; evaluation follows
            (evaluate every member on val and test (every `eval_every` epochs and at the last), store metrics,
             keep the best)
            on_after_evaluate         trainer.last_eval holds this epoch's metrics (only after an evaluation)
            (write the checkpoint)
        on_generation_end             extra evaluations: trainer.log_generation(member, {...})
    on_fit_end

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

    @property
    def handler(self) -> str:
        return f"on_{self.value}"
