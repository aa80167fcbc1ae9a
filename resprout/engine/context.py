"""The method context: the one object a method receives, and the contract of what it may rely on.

Every handler of a :class:`~resprout.engine.method.Method` (``setup``, ``update_steps``, ``on_<event>``) is called
with a :class:`RunContext`. It is a view of the loop, not a copy: what it returns is the run's live state at the
moment of the call. A method uses nothing else of the trainer (``tests/test_context.py`` checks that no method
reaches a private attribute).

The events, in the order the loop fires them (see :mod:`resprout.engine.events` for the loop around them)::

    setup                 once, when the run is built: add members (add_member, set_model, remove_member), taps,
                          learning-rate modifiers (rates.modify); a new head as apply_surgery, so that a
                          network rebuilt from the run's weights files has it (no event is sent in setup)
    on_fit_start          once per fit() (also after a resume)
    on_generation_start   then every trainable member gets a fresh optimizer and schedule
    on_epoch_start
    on_batch_start        inputs / targets may be replaced
    (the fed members' forward: outputs)
    update_steps          the batch's optimization steps (None: one step over every member and term)
    on_loss               add_loss(member, name, value) for the members updates(member) names
    on_after_backward     gradients exist
    on_after_step         the step's optimizers stepped (at the rates of ``rates``)
    on_batch_end
    on_epoch_end          then the evaluation (task.evaluate on every split, when due)
    on_after_evaluate     last_eval holds the epoch's metrics
    on_generation_end     log_generation(member, metrics)
    on_fit_end
    on_member_resized     whenever apply_surgery changed a member's shapes (resized, resized_maps, replaying)

What the context holds:

* **members**: ``members`` (name -> :class:`~resprout.engine.members.Member`), ``trainable``, ``task_members``,
  ``add_member``, ``remove_member``, ``set_model``, ``new_model`` / ``model_factory``, ``optim_spec``;
* **data**: ``train_loader``, ``eval_loaders``, ``full_eval_loaders``, ``input_shape``; the batch: ``inputs``,
  ``targets``, ``inputs_of(member)``, ``targets_of(member)`` (a member with its own data stream);
* **position**: ``generation``, ``epoch``, ``step`` and ``position()`` (a :class:`~resprout.engine.rates.Position`);
* **the step**: ``outputs``, ``output_of(member)``, ``add_loss``, ``terms``, ``update_step``, ``updates(member)``,
  ``scratch``, ``autocast()``;
* **features and surgery**: ``tap``, ``taps``, ``apply_surgery``, ``surgery`` (the history), ``resized``,
  ``resized_maps``, ``replaying``;
* **learning rates**: ``rates`` (:class:`~resprout.engine.rates.LearningRates`: register modifiers there);
* **the task and reports**: ``task``, ``evaluate``, ``last_eval``, ``results``, ``log_generation``, ``store``,
  ``run_id``, ``progress``;
* **the run**: ``config``, ``device``, ``dist``, ``per_rank``, ``methods``, ``scaler`` (fp16), the collectives
  ``all_reduce_sum`` and ``all_gather_object``, and ``request_stop``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from resprout.engine.distributed import all_gather_object, all_reduce_sum


class RunContext:
    """What a method may use of a run (see the module docstring for the contract and the event order)."""

    __slots__ = ("_loop",)

    def __init__(self, loop) -> None:
        self._loop = loop  # the trainer; the context only delegates to its public parts

    # -- the run ---------------------------------------------------------------------------------------------------
    @property
    def config(self):
        """The run's configuration (read only)."""
        return self._loop.config

    @property
    def device(self) -> torch.device:
        return self._loop.device

    @property
    def dist(self):
        """The process group (:class:`~resprout.engine.distributed.DistInfo`): rank, world size, is_main."""
        return self._loop.dist

    @property
    def per_rank(self) -> bool:
        """Whether the run's members live on one rank each (grafting's peers) rather than replicated."""
        return self._loop.per_rank

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over every process (itself in one process)."""
        return all_reduce_sum(tensor, self._loop.dist)

    def all_gather_object(self, obj: Any) -> list:
        """``obj`` of every process, in rank order."""
        return all_gather_object(obj, self._loop.dist)

    @property
    def methods(self) -> list:
        """The run's methods, in order (a method that composes with another may read it; it never calls its
        handlers)."""
        return self._loop.methods

    @property
    def scaler(self):
        """fp16's gradient scaler (``torch.amp.GradScaler``), or None in fp32 and bf16."""
        return self._loop.scaler

    def request_stop(self, signum: int = 15) -> None:
        """Stop after this step as ``signum`` would (a checkpoint is written in a saved run)."""
        self._loop.request_stop(signum)

    # -- members ---------------------------------------------------------------------------------------------------
    @property
    def members(self) -> dict:
        return self._loop.members

    @property
    def trainable(self) -> list:
        return self._loop.trainable

    @property
    def task_members(self) -> list:
        """The local trainable classifiers the current update step trains (the members a task loss applies to)."""
        return self._loop.task_members

    def add_member(self, name: str, model: nn.Module, **kwargs: Any):
        """Add a network to the run (in ``setup``); see :meth:`resprout.engine.trainer.Trainer.add_member`."""
        return self._loop.add_member(name, model, **kwargs)

    def remove_member(self, name: str) -> None:
        self._loop.remove_member(name)

    def set_model(self, name: str, model: nn.Module) -> None:
        """Replace a member's network (in ``setup``); later changes go through :meth:`apply_surgery`. A change a
        network rebuilt from the run's weights needs (a new head) is better made with :meth:`apply_surgery` in
        ``setup`` too: it is recorded in the weights files, and a resume's setup applies it again."""
        self._loop.set_model(name, model)

    @property
    def model_factory(self):
        return self._loop.model_factory

    def new_model(self, seed: int | None = None) -> nn.Module:
        """A freshly initialized network of the run's architecture (under ``seed``, without touching the run's
        random state)."""
        return self._loop.new_model(seed)

    def optim_spec(self, member) -> dict:
        """The optimizer and schedule keys of ``member`` (the run's, with the member's own on top)."""
        return self._loop.optim_spec(member)

    # -- data --------------------------------------------------------------------------------------------------------
    @property
    def train_loader(self):
        return self._loop.train_loader

    @property
    def eval_loaders(self) -> dict:
        return self._loop.eval_loaders

    @property
    def full_eval_loaders(self) -> dict:
        return self._loop.full_eval_loaders

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the training images."""
        return self._loop.input_shape

    @property
    def inputs(self) -> torch.Tensor:
        """The batch's images (``on_batch_start`` may replace them)."""
        return self._loop.inputs

    @inputs.setter
    def inputs(self, value: torch.Tensor) -> None:
        self._loop.inputs = value

    @property
    def targets(self) -> torch.Tensor:
        return self._loop.targets

    @targets.setter
    def targets(self, value: torch.Tensor) -> None:
        self._loop.targets = value

    def inputs_of(self, name: str) -> torch.Tensor:
        """The batch member ``name`` trains on (its own stream when it has a data seed)."""
        return self._loop.inputs_of(name)

    def targets_of(self, name: str) -> torch.Tensor:
        return self._loop.targets_of(name)

    # -- position ----------------------------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self._loop.generation

    @property
    def epoch(self) -> int:
        return self._loop.epoch

    @property
    def step(self) -> int:
        return self._loop.step

    def position(self, t: float | None = None, dt: float = 0.0):
        return self._loop.position(t, dt)

    # -- the step ----------------------------------------------------------------------------------------------------
    @property
    def outputs(self) -> dict:
        """The fed members' outputs of this batch."""
        return self._loop.outputs

    def output_of(self, name: str) -> Any:
        """A fed member's output, or a frozen member's (computed once per step, without gradients)."""
        return self._loop.output_of(name)

    def add_loss(self, member: str, name: str, value: torch.Tensor) -> None:
        """Add a loss term that trains ``member`` (named for the logs)."""
        self._loop.add_loss(member, name, value)

    @property
    def terms(self) -> list[tuple[str, str, torch.Tensor]]:
        """The (member, name, value) loss terms added in this batch so far (a copy)."""
        return self._loop.terms

    @property
    def update_step(self):
        """The update step being computed (None: the default single step)."""
        return self._loop.update_step

    def updates(self, name: str) -> bool:
        """Whether the update step being computed trains member ``name``."""
        return self._loop.updates(name)

    @property
    def scratch(self) -> dict:
        """Per batch: what one update step leaves for a later one."""
        return self._loop.scratch

    def autocast(self):
        """The run's precision context, for a method's own forward passes."""
        return self._loop.autocast()

    # -- features and surgery ------------------------------------------------------------------------------------------
    @property
    def taps(self):
        """The captured features (:class:`~resprout.engine.taps.FeatureTaps`): ``taps.output(member, path)``."""
        return self._loop.taps

    def tap(self, member: str, path: str, *, inputs: bool = False, detach: bool = False) -> None:
        """Capture the output (and with ``inputs`` the input) of module ``path`` of ``member`` in every forward."""
        self._loop.tap(member, path, inputs=inputs, detach=detach)

    def apply_surgery(self, name: str, op: str, **args: Any) -> nn.Module:
        """Change a member's shapes with a registered surgery; recorded, replayed on resume."""
        return self._loop.apply_surgery(name, op, **args)

    @property
    def surgery(self) -> list[dict]:
        """The surgery history: one record (member, op, args, generation, epoch, step) per operation applied."""
        return self._loop.surgery

    @property
    def resized(self) -> str | None:
        """During ``on_member_resized``: the member whose shapes changed."""
        return self._loop.resized

    @property
    def resized_maps(self) -> dict | None:
        """During ``on_member_resized`` (not on a replay): the surgery's index maps."""
        return self._loop.resized_maps

    @property
    def replaying(self) -> bool:
        """Whether a resume is replaying the surgery history."""
        return self._loop.replaying

    # -- learning rates ------------------------------------------------------------------------------------------------
    @property
    def rates(self):
        """The owner of the learning rates (:class:`~resprout.engine.rates.LearningRates`)."""
        return self._loop.rates

    # -- the task and reports ------------------------------------------------------------------------------------------
    @property
    def task(self):
        """The run's task (:mod:`resprout.engine.task`): its targets, evaluation and metrics."""
        return self._loop.task

    @task.setter
    def task(self, value) -> None:
        self._loop.task = value

    def evaluate(self, model: nn.Module, split: str = "test", correct: list | None = None, *,
                 autocast: bool = True) -> dict[str, float]:
        """The task's metrics of ``model`` on a split."""
        return self._loop.evaluate(model, split, correct, autocast=autocast)

    @property
    def last_eval(self) -> dict:
        """member -> split -> metrics of the latest evaluation."""
        return self._loop.last_eval

    @property
    def results(self) -> dict:
        """The run's results; a method adds its own record under its name."""
        return self._loop.results

    def log_generation(self, member: str, metrics: dict[str, float], *, in_results: bool = True) -> None:
        """Record per-generation metrics of a member."""
        self._loop.log_generation(member, metrics, in_results=in_results)

    @property
    def store(self):
        return self._loop.store

    @property
    def run_id(self) -> str | None:
        return self._loop.run_id

    @property
    def progress(self):
        return self._loop.progress
