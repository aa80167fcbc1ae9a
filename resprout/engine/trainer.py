"""The trainer: named members, generations x epochs, update steps, events, exact checkpoints.

A run trains a set of named *members* (see :mod:`resprout.engine.members`), each with its own optimizer and
schedule. Every step forwards each fed member on the batch, then runs the batch's *update steps*: by default one
step in which the methods add loss terms and one backward over their sum steps every optimizer; a method that
needs more (a discriminator trained apart from the student, say) declares its own steps with ``update_steps``.
See :mod:`resprout.engine.events` for the loop and its hook points.

Precision (:mod:`resprout.engine.precision`): the members' forwards and the update steps' loss terms are computed
under the run's autocast (``trainer.autocast()``, nothing in fp32); every term is summed in fp32, backward runs
outside autocast, and with fp16 the loss is scaled and the gradients unscaled before ``on_after_backward``.

The loop owns its collaborators: :class:`~resprout.engine.state.Checkpointer` (surgery and checkpoints),
:class:`~resprout.engine.evaluation.Reporter` (evaluation and epoch reports),
:class:`~resprout.engine.rates.LearningRates` (the one writer of learning rates) and the run's task
(:mod:`resprout.engine.task`). Methods see the run through a :class:`~resprout.engine.context.RunContext`, never
the trainer itself.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from resprout.config import Config
from resprout.data.loader import EvalLoader, TrainLoader
from resprout.engine import checkpoint as ckpt
from resprout.engine.distributed import DistInfo, all_reduce_sum
from resprout.engine.context import RunContext
from resprout.engine.evaluation import SKIPPED, Reporter, classification_metrics, evaluate  # noqa: F401  (re-exported)
from resprout.engine.events import Event
from resprout.engine.loggers import Loggers
from resprout.engine.members import PLACEMENTS, Member, UpdateStep
from resprout.engine.method import Method, handlers
from resprout.engine.optim import MEMBER_KEYS, OPTIM_KEYS, Schedule, build_optimizer
from resprout.engine.precision import autocast, grad_scaler, resolve_channels_last, resolve_precision
from resprout.engine.progress import Progress
from resprout.engine.rates import LearningRates, Position
from resprout.engine.state import CHECKPOINT_NAME, Checkpointer, Fault  # noqa: F401  (re-exported)
from resprout.engine.store import Store
from resprout.engine.taps import FeatureTaps
from resprout.engine.task import ClassificationTask, Task
from resprout.errors import ConfigError, Interrupted, TrainingDiverged

__all__ = ["CHECKPOINT_NAME", "Member", "Trainer", "UpdateStep", "classification_metrics", "evaluate"]


def _has_grads(optimizer: torch.optim.Optimizer) -> bool:
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])


class Trainer:
    """Trains ``members`` with ``methods`` on ``train`` and evaluates on ``evals`` (``{"val": ..., "test": ...}``).

    ``full_evals`` are the same splits unsharded, for runs with per-rank members under torch.distributed (each
    rank evaluates its own members on the whole split). ``loggers``: objects that receive a copy of the metrics
    (:class:`resprout.engine.loggers.Logger`), besides the ones ``config.loggers`` names. ``task``: the run's task
    before the methods' setup (default :class:`~resprout.engine.task.ClassificationTask`; the re-id task for a
    re-id set)."""

    def __init__(self, config: Config, members: dict[str, nn.Module | Member], train: TrainLoader,
                 evals: dict[str, EvalLoader], methods: list[Method], *, device: torch.device | str = "cpu",
                 run_dir: str | Path | None = None, store: Store | None = None, run_id: str | None = None,
                 progress: Progress | None = None, dist: DistInfo | None = None,
                 full_evals: dict[str, EvalLoader] | None = None,
                 model_factory: Callable[[], nn.Module] | None = None, loggers: list | None = None,
                 task: Task | None = None) -> None:
        self.config = config
        self.model_factory = model_factory
        self.device = torch.device(device)
        # resolved by resprout.run already; a trainer built by hand resolves (and checks) them here
        self.precision = resolve_precision(getattr(config, "precision", "fp32"), self.device)
        self.channels_last = resolve_channels_last(config.channels_last, config.model)
        self.compiled = bool(getattr(config, "compile", False))
        self.scaler = grad_scaler(self.precision, self.device)  # fp16 only
        self.train_loader = train
        self.eval_loaders = evals
        self.full_eval_loaders = full_evals or evals
        self.methods = list(methods)
        self.run_dir = Path(run_dir) if run_dir else None
        self.store = store if (dist is None or dist.is_main) else None
        self.run_id = run_id
        self.progress = progress or Progress()
        self.dist = dist = dist or DistInfo()
        self.schedule = Schedule.from_config(config)
        self.rates = LearningRates(lambda member: self.optim_spec(member)["lr"])  # the one writer of rates
        self.taps = FeatureTaps()
        self.members: dict[str, Member] = {}
        self.per_rank = False
        for name, m in members.items():
            if isinstance(m, Member):
                self.add_member(m.name, m.model, trainable=m.trainable, evaluate=m.evaluate, task=m.task,
                                logits=m.logits, manual=m.manual, placement=m.placement, rank=m.rank,
                                data_seed=m.data_seed, optim=m.optim)
            else:
                self.add_member(name, m)
        # position: `epoch` epochs of `generation` are done, and `step` steps of the next one
        self.generation = 0
        self.epoch = 0
        self.step = 0
        self.started = False  # the current generation's start event ran and its optimizers exist
        self.finished = False
        self.surgery: list[dict] = []
        self.results: dict = {"final": {}, "best": {}, "generations": []}
        self.last_eval: dict[str, dict[str, dict]] = {}  # member -> split -> metrics of the latest evaluation
        self.dataset = None  # the prepared dataset, when the run was built from a config (resprout.run)
        self.task: Task = task or ClassificationTask()  # targets, evaluation, metrics (a method may set another)
        self.update_step: UpdateStep | None = None  # the step being computed (None: the default single step)
        self.scratch: dict[str, Any] = {}  # per batch: what one update step leaves for a later one
        self.resized: str | None = None  # the member whose shapes just changed (during on_member_resized)
        self.replaying = False
        self.resized_maps: dict | None = None  # during on_member_resized: the surgery's index maps
        self._accum: dict[str, torch.Tensor] = {}
        self._epoch_time = 0.0
        self._eval_time = 0.0  # evaluation seconds of the epoch being finished
        self._terms: list[tuple[str, str, torch.Tensor]] = []
        self._manual_terms: set[str] = set()
        self.inputs: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self._member_batches: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._streams: dict[str, TrainLoader] = {}
        self.outputs: dict[str, Any] = {}
        self._frozen_outputs: dict[str, Any] = {}
        self._stop: int | None = None
        self._checkpoint_due = False
        self._writer: ckpt.AsyncWriter | None = None
        self._best_writer: ckpt.AsyncWriter | None = None
        self._last_checkpoint = time.monotonic()
        self._fault = Fault.from_env()  # a test hook: RESPROUT_FAULT (resprout.engine.state.Fault)
        # collaborators of the loop: checkpoints and surgery; evaluation and reports
        self.checkpointer = Checkpointer(self)
        self.reporter = Reporter(self)
        self.context = RunContext(self)  # what the methods see of the run (resprout.engine.context)
        self.setting_up = True  # surgery in a method's setup is recorded but announces nothing (see apply_surgery)
        for m in self.methods:
            m.setup(self.context)
        self.setting_up = False
        self._handlers = {e: handlers(self.methods, e) for e in Event}
        self._step_methods = [m for m in self.methods if type(m).update_steps is not Method.update_steps]
        self._configure_members()
        # dashboard logs (metrics.csv, TensorBoard, the user's objects): the main process writes them, as the store
        self.loggers = Loggers.build(getattr(config, "loggers", "csv"), self.run_dir, config.epochs,
                                     list(self.members), loggers) if dist.is_main else Loggers([])

    # -- members ----------------------------------------------------------------------------------------------------
    def add_member(self, name: str, model: nn.Module, *, trainable: bool = True, evaluate: bool = True,
                   task: bool = True, logits: bool = True, manual: bool = False, placement: str = "replicated",
                   rank: int | None = None, data_seed: int | None = None, optim: dict | None = None) -> Member:
        """Add a network to the run (methods call this from ``setup``).

        ``manual``: the trainer does not feed it the batch (a discriminator, a regressor). ``placement``:
        ``replicated`` (DDP over all ranks) or ``per_rank`` (it lives on rank ``rank`` only). ``data_seed``: its
        own data order and augmentation. ``optim``: optimizer and schedule keys for this member (the config's
        ``member.<name>.<key>`` overrides them)."""
        if name in self.members:
            raise ConfigError(f"member {name!r} exists already")
        bad = set(optim or {}) - set(MEMBER_KEYS)
        if bad:
            raise ConfigError(f"member {name!r}: unknown optimizer keys {sorted(bad)}; allowed: {MEMBER_KEYS}")
        if placement not in PLACEMENTS:
            raise ConfigError(f"member {name!r}: bad placement {placement!r}; allowed: {', '.join(PLACEMENTS)}")
        if placement == "per_rank" and (not isinstance(rank, int) or rank < 0):
            raise ConfigError(f"member {name!r}: placement=per_rank needs the rank it lives on (an integer >= 0)")
        model = self._place(model)
        if not trainable:
            self._freeze(model)
        member = Member(name, model, trainable=trainable, evaluate=evaluate, task=task and trainable and not manual,
                        logits=logits, manual=manual, placement=placement, rank=rank, data_seed=data_seed,
                        optim=dict(optim or {}))
        self.members[name] = member
        self._wrap(member)
        return member

    def remove_member(self, name: str) -> None:
        self.taps.remove(name)
        del self.members[name]

    def set_model(self, name: str, model: nn.Module) -> None:
        """Replace a member's network (in ``setup``, e.g. with a new head); later changes go through surgery."""
        member = self.members[name]
        member.model = self._place(model)
        self._wrap(member)
        if self.taps.active:
            self.taps.attach(name, member.model)

    def tap(self, member: str, path: str, *, inputs: bool = False, detach: bool = False) -> None:
        """Capture the output (and with ``inputs`` the input) of module ``path`` of ``member`` in every forward;
        read it with ``taps.output(member, path)``. Taps follow the member through surgery."""
        self.taps.request(member, path, inputs=inputs, detach=detach)
        self.taps.attach(member, self.members[member].model)

    @property
    def trainable(self) -> list[Member]:
        return [m for m in self.members.values() if m.trainable]

    @property
    def task_members(self) -> list[Member]:
        """The local trainable classifiers the current update step trains: the members a task loss (CE, label
        smoothing, ...) applies to."""
        return [m for m in self.members.values() if m.task and m.local and self.updates(m.name)]

    def updates(self, name: str) -> bool:
        """Whether the update step being computed trains member ``name``."""
        member = self.members[name]
        if not (member.trainable and member.local):
            return False
        return self.update_step is None or name in self.update_step.members

    def _place(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def autocast(self):
        """The context of the run's precision (``torch.autocast`` for bf16/fp16, nothing for fp32): the trainer
        computes every member's forward and every loss term in it; a method running a forward of its own (a
        second forward, a pre-training loop) wraps it in this too, and leaves backward outside."""
        return autocast(self.precision, self.device)

    @staticmethod
    def _freeze(model: nn.Module) -> None:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

    def _wrap(self, member: Member) -> None:
        member.forward_module = member.model
        if self.dist.enabled and member.trainable and member.placement == "replicated":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            member.forward_module = DDP(member.model, device_ids=ids)
        if self.compiled and member.trainable:
            member.forward_module = torch.compile(member.forward_module)

    def release_wrappers(self) -> None:
        """After the run: every member forwards through its own model again. Data-parallel wrappers hold the process
        group; dropped here, they free it when the group is left (:func:`resprout.engine.distributed.shutdown`),
        not when the garbage collector breaks the trainer's reference cycles (its context and collaborators point
        back at it), so the group's threads do not run on into the interpreter's exit."""
        for member in self.members.values():
            member.forward_module = member.model

    def _configure_members(self) -> None:
        """After every method's setup: config overrides per member, placement, data streams. Refuses up front."""
        overrides = getattr(self.config, "member_options", {}) or {}
        for name, opts in overrides.items():
            if name not in self.members:
                raise ConfigError(f"member.{name}.* given but this run has no member {name!r} "
                                  f"(members: {', '.join(self.members)})")
            self.members[name].optim.update(opts)
        per_rank = [m for m in self.members.values() if m.placement == "per_rank"]
        if self.dist.enabled and per_rank:
            replicated = [m.name for m in self.trainable if m.placement == "replicated"]
            if replicated:
                raise ConfigError(f"members {', '.join(replicated)} are replicated and "
                                  f"{', '.join(m.name for m in per_rank)} per rank; a run uses one placement")
            for m in per_rank:
                if m.rank >= self.dist.world_size:
                    raise ConfigError(f"member {m.name!r} lives on rank {m.rank} but the run has "
                                      f"{self.dist.world_size} processes")
                m.local = m.rank == self.dist.rank
                m.forward_module = m.model
            self.per_rank = True
            # every rank trains its own members on whole batches
            self.train_loader = self.train_loader.stream(self.train_loader.seed)
        for m in self.members.values():
            if m.data_seed is not None and m.local and m.trainable:
                self._streams[m.name] = self.train_loader.stream(m.data_seed)

    def optim_spec(self, member: Member) -> dict:
        spec = {k: getattr(self.config, k) for k in MEMBER_KEYS}
        spec.update(member.optim)
        return spec

    def rebuild_optimizer(self, name: str) -> None:
        """A fresh optimizer and schedule for one member."""
        member = self.members[name]
        if not (member.trainable and member.local):
            member.optimizer = None
            return
        spec = self.optim_spec(member)
        spec["lr"] = self.rates.base(member, self.position())
        member.optimizer = build_optimizer(member.model, {k: spec[k] for k in OPTIM_KEYS})
        member.schedule = self.schedule if not (set(member.optim) - set(OPTIM_KEYS)) else \
            Schedule.from_spec(spec, self.config.epochs)

    def _build_optimizers(self) -> None:
        for name in self.members:
            self.rebuild_optimizer(name)

    # -- helpers for methods -----------------------------------------------------------------------------------------
    def add_loss(self, member: str, name: str, value: torch.Tensor) -> None:
        """Add a loss term that trains ``member`` (named for the logs, e.g. ``ce`` or ``kd``)."""
        if not self.updates(member):
            step = self.update_step.name if self.update_step else "default"
            raise ConfigError(f"loss term {name!r} of member {member!r} added in update step {step!r}, which "
                              f"does not train it (check trainer.updates(member))")
        if value.dtype in (torch.bfloat16, torch.float16):  # terms are summed (and reported) in fp32
            value = value.float()
        self._terms.append((member, name, value))

    def inputs_of(self, name: str) -> torch.Tensor:
        """The batch member ``name`` trains on (its own stream when it has a data seed)."""
        return self._member_batches[name][0] if name in self._member_batches else self.inputs

    def targets_of(self, name: str) -> torch.Tensor:
        return self._member_batches[name][1] if name in self._member_batches else self.targets

    def output_of(self, name: str) -> Any:
        """The output of member ``name`` on the current inputs: a fed member's forward of this step, or a
        frozen member's forward in eval mode without gradients (computed once per step)."""
        if name in self.outputs:
            return self.outputs[name]
        if name not in self._frozen_outputs:
            with torch.no_grad(), self.autocast():
                self._frozen_outputs[name] = self.members[name].model(self.inputs)
        return self._frozen_outputs[name]

    def new_model(self, seed: int | None = None) -> nn.Module:
        """A freshly initialized network of the run's architecture (on the CPU), from the model factory; with
        ``seed`` drawn under that seed without disturbing the run's random state."""
        if self.model_factory is None:
            raise ConfigError("this trainer has no model factory: build it with resprout.run (or pass "
                              "model_factory=) to let methods draw fresh networks")
        if seed is None:
            return self.model_factory()
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            return self.model_factory()
        finally:
            torch.set_rng_state(state)

    def position(self, t: float | None = None, dt: float = 0.0) -> Position:
        """Where the run is (``t``: the fractional epoch of the generation; by default at the current step)."""
        if t is None:
            t = self.epoch + self.step / max(self.train_loader.steps(0, 0), 1)
        return Position(self.generation, self.epoch, self.step, t, dt)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the training images."""
        return tuple(self.train_loader.input_shape)

    def _emit(self, event: Event) -> None:
        for h in self._handlers[event]:
            h(self.context)

    @property
    def terms(self) -> list[tuple[str, str, torch.Tensor]]:
        """The (member, name, value) loss terms added in this batch so far (a copy)."""
        return list(self._terms)

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop after this step, as the signal ``signum`` would."""
        self._stop = signum

    # -- collaborators: checkpoints and surgery (resprout.engine.state), reports (resprout.engine.evaluation) ----------
    def apply_surgery(self, name: str, op: str, **args: Any) -> nn.Module:
        return self.checkpointer.apply_surgery(name, op, **args)

    def state_dict(self) -> dict:
        return self.checkpointer.state_dict()

    def save_checkpoint(self) -> None:
        self.checkpointer.save_checkpoint()

    def fault_point(self, moment: str) -> None:
        self.checkpointer.fault_point(moment)

    def load_checkpoint(self, path: str | Path) -> None:
        self.checkpointer.load_checkpoint(path)

    def evaluate(self, model: nn.Module, split: str = "test", correct: list | None = None, *,
                 autocast: bool = True) -> dict[str, float]:
        return self.reporter.evaluate(model, split, correct, autocast=autocast)

    def log_generation(self, member: str, metrics: dict[str, float], *, in_results: bool = True) -> None:
        self.reporter.log_generation(member, metrics, in_results=in_results)

    def log_step(self, generation: int, epoch: int) -> int:
        return self.reporter.log_step(generation, epoch)

    def _accumulate(self, n: int) -> None:
        self.reporter._accumulate(n)

    def _finish_epoch(self) -> None:
        self.reporter._finish_epoch()

    def _finish_generation(self) -> None:
        self.reporter._finish_generation()

    # -- the loop ---------------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to the end (or continue from a loaded checkpoint) and return the results."""
        cfg = self.config
        restore = self._install_signal_handlers()
        self._writer = ckpt.AsyncWriter() if self.run_dir and self.dist.is_main else None
        self._best_writer = self._writer if (self.dist.is_main or not self.run_dir or not self.per_rank) \
            else ckpt.AsyncWriter()
        status = "failed"
        if self.store is not None:
            self.store.set_status(self.run_id, "running")
        try:
            if self.finished:
                status = "finished"
                return self.results
            self.loggers.start(self.log_step(self.generation, self.epoch), cfg.to_dict())
            steps_per_epoch = self.train_loader.steps(0, 0)
            for name, stream in self._streams.items():
                if stream.steps(0, 0) != steps_per_epoch:
                    raise ConfigError(f"member {name!r}: its data stream has {stream.steps(0, 0)} steps per epoch, "
                                      f"the run {steps_per_epoch}")
            total = cfg.generations * cfg.epochs * steps_per_epoch
            done = (self.generation * cfg.epochs + self.epoch) * steps_per_epoch + self.step
            self.progress.start(total, done)
            self._emit(Event.FIT_START)
            while self.generation < cfg.generations:
                if not self.started:
                    self._start_generation()
                while self.epoch < cfg.epochs:
                    self._run_epoch()
                    self._finish_epoch()
                self._finish_generation()
            self.finished = True
            self._emit(Event.FIT_END)
            self.save_checkpoint()
            status = "finished"
            return self.results
        except Interrupted:
            status = "interrupted"
            raise
        except TrainingDiverged:
            status = "diverged"
            raise
        finally:
            restore()
            for w in {id(w): w for w in (self._writer, self._best_writer) if w is not None}.values():
                w.close()
            self._writer = self._best_writer = None
            if self.store is not None:
                self.store.set_status(self.run_id, status)
            self.progress.close()
            self.loggers.close()

    def _start_generation(self) -> None:
        self._emit(Event.GENERATION_START)
        self._build_optimizers()
        self.started = True

    def start_steps(self) -> None:
        """The events and state :meth:`fit` sets up before the first step of a fresh run, for a caller that takes
        the steps itself (the speed benchmarks time :meth:`train_step`, the step a run takes): ``fit_start`` and
        ``generation_start`` fired, the generation's optimizers built, the trainable members in training mode. No
        loggers, progress, evaluation or checkpoints: those stay with :meth:`fit`."""
        self._emit(Event.FIT_START)
        self._start_generation()
        for m in self.members.values():
            if m.trainable:
                m.model.train()

    def _run_epoch(self) -> None:
        g, e = self.generation, self.epoch
        steps = self.train_loader.steps(g, e)
        if self.step == 0:
            self._accum = {}
            self._epoch_time = 0.0
            self._emit(Event.EPOCH_START)
        self.progress.start_epoch(f"gen {g + 1}/{self.config.generations} ep {e + 1}/{self.config.epochs}", steps,
                                  self.step)
        for m in self.members.values():
            if m.trainable:
                m.model.train()
        t0 = time.perf_counter()
        minutes = self.config.checkpoint_minutes
        while self.step < steps:
            x, y = self.train_loader.batch(g, e, self.step)
            for name, stream in self._streams.items():
                xs, ys = stream.batch(g, e, self.step)
                self._member_batches[name] = (xs, self.task.targets(ys))
            self.train_step(x, y, e + self.step / steps, 1.0 / steps)
            self.step += 1
            self.fault_point("step")
            if self._stop is not None:
                self._epoch_time += time.perf_counter() - t0
                self._interrupt()
            if self.per_rank:  # every rank gathers at the same step: rank 0's clock decides (shared in the step)
                due, self._checkpoint_due = self._checkpoint_due, False
            else:
                due = minutes and self.run_dir and time.monotonic() - self._last_checkpoint > 60 * minutes
            if due:
                self.save_checkpoint()
        self._epoch_time += time.perf_counter() - t0

    def train_step(self, x: torch.Tensor, y: torch.Tensor, t: float, dt: float) -> None:
        """One training step on the batch ``(x, y)`` at ``t`` epochs into the generation (``dt``: one step's share of
        an epoch): the batch events, every fed member's forward, the losses, backward and the optimizers' updates."""
        self.inputs, self.targets = x, self.task.targets(y)  # the task owns what a batch's labels become
        self.outputs, self._frozen_outputs, self._terms, self.scratch = {}, {}, [], {}
        self._manual_terms = set()
        if self.taps.active:
            self.taps.clear()
        for h in self._handlers[Event.BATCH_START]:
            h(self.context)
        with self.autocast():
            for m in self.members.values():
                if m.fed:  # through the task: a detector in training mode takes the targets too
                    self.outputs[m.name] = self.task.forward(m, self.inputs_of(m.name), self.targets_of(m.name))
        steps = self._update_steps()
        if steps is None:
            self._default_step(t, dt)
        else:
            for i, step in enumerate(steps):
                self._update(step, t, dt, last=i == len(steps) - 1)
        self._accumulate(len(self.targets))
        for h in self._handlers[Event.BATCH_END]:
            h(self.context)

    def _update_steps(self) -> list[UpdateStep] | None:
        if not self._step_methods:
            return None
        steps = [s for m in self._step_methods for s in (m.update_steps(self.context) or [])]
        if not steps:
            return None
        for s in steps:
            for name in s.members:
                if name not in self.members or not self.members[name].trainable:
                    raise ConfigError(f"update step {s.name!r} names {name!r}, which is not a trainable member "
                                      f"(trainable: {', '.join(m.name for m in self.trainable)})")
        return steps

    def _check_loss(self, value: float) -> float:
        """The same decision on every process: diverged, stop, checkpoint now (one tiny reduction)."""
        if self.dist.enabled:
            # every process must take the same decision at the same step, or the others would wait forever in
            # the next collective
            due = 0.0
            if self.per_rank and self.dist.is_main and self.config.checkpoint_minutes and self.run_dir:
                due = float(time.monotonic() - self._last_checkpoint > 60 * self.config.checkpoint_minutes)
            flags = torch.tensor([0.0 if math.isfinite(value) else 1.0, 1.0 if self._stop is not None else 0.0,
                                  due], device=self.device)
            diverged, stop, due = all_reduce_sum(flags, self.dist).tolist()
            if diverged and math.isfinite(value):
                value = math.nan
            if stop and self._stop is None:
                self._stop = signal.SIGTERM
            self._checkpoint_due = self._checkpoint_due or bool(due)
        if not math.isfinite(value):
            where = f" in update step {self.update_step.name!r}" if self.update_step else ""
            at = (f"loss is {value}{where} at generation {self.generation + 1} epoch {self.epoch + 1} step "
                  f"{self.step + 1}; stopped")
            if self.run_dir is None:
                raise TrainingDiverged(f"{at}; nothing was saved (an unsaved run)")
            if (self.run_dir / CHECKPOINT_NAME).exists():
                raise TrainingDiverged(f"{at}, the last good checkpoint is kept in {self.run_dir}; continue with "
                                       f"changed settings, e.g.: resprout resume {self.run_dir} lr=<lower>")
            raise TrainingDiverged(f"{at}; no checkpoint was saved yet, so nothing was kept; start again with "
                                   f"changed settings, e.g.: resprout resume {self.run_dir} lr=<lower>")
        return value

    def _default_step(self, t: float, dt: float) -> None:
        """Today's rule: the sum of every term, one backward, every local trainable optimizer steps."""
        with self.autocast():
            for h in self._handlers[Event.LOSS]:
                h(self.context)
        if not self._terms:
            raise ConfigError("no method added a loss term; add a task loss such as method=ce")
        total = self._terms[0][2] if len(self._terms) == 1 else torch.stack([v for _, _, v in self._terms]).sum()
        value = self._check_loss(total.item())
        self._optimize([m for m in self.trainable if m.local], lambda: self._scaled(total).backward(), t, dt)
        self.progress.step(value)

    def _scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to backpropagate: scaled by fp16's gradient scaler, as it is otherwise."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def _optimize(self, members: list[Member], backward, t: float, dt: float) -> None:
        """Zero the members' gradients, ``backward()``, then step their optimizers at the schedule's rate.

        With fp16's gradient scaler the gradients are unscaled before ``on_after_backward`` (methods see true
        gradients), and a step whose gradients overflowed is skipped by the scaler and counted (``skipped_steps``
        in the epoch's train metrics): the scale is lowered, the run goes on, nothing is called divergence."""
        for m in members:
            m.optimizer.zero_grad(set_to_none=True)
        backward()
        scaler = self.scaler
        if scaler is not None:
            members = [m for m in members if _has_grads(m.optimizer)]  # the scaler steps only what it unscaled
            for m in members:
                scaler.unscale_(m.optimizer)
        for h in self._handlers[Event.AFTER_BACKWARD]:
            h(self.context)
        position = self.position(t, dt)
        for m in members:
            self.rates.apply(m, position)
            if scaler is None:
                m.optimizer.step()
            else:
                scaler.step(m.optimizer)
        if scaler is not None and members:
            before = scaler.get_scale()
            scaler.update()
            if scaler.get_scale() < before:  # inf or NaN in the gradients: this step was skipped
                self._accum[SKIPPED] = self._accum.get(SKIPPED, 0) + 1
        for h in self._handlers[Event.AFTER_STEP]:
            h(self.context)
        # manual members are not forwarded by the trainer: count their samples for their train metrics
        for member, _, _ in self._terms:
            if member not in self.outputs:
                self._manual_terms.add(member)

    def _update(self, step: UpdateStep, t: float, dt: float, *, last: bool) -> None:
        """One declared update step: its terms, a backward into its members only, their optimizers step."""
        self.update_step = step
        try:
            start = len(self._terms)
            with self.autocast():
                for h in self._handlers[Event.LOSS]:
                    h(self.context)
            terms = self._terms[start:]
            chosen = [v for _, name, v in terms if step.terms is None or name in step.terms]
            if len(chosen) != len(terms):
                extra = sorted({name for _, name, _ in terms if name not in step.terms})
                raise ConfigError(f"update step {step.name!r} backpropagates terms {', '.join(step.terms)}, but "
                                  f"terms {', '.join(extra)} were added to it")
            if not chosen:
                raise ConfigError(f"update step {step.name!r} got no loss terms")
            total = chosen[0] if len(chosen) == 1 else torch.stack(chosen).sum()
            value = self._check_loss(total.item())
            members = [self.members[n] for n in step.members if self.members[n].local]
            params = [p for m in members for p in m.model.parameters() if p.requires_grad]
            # inputs=: gradients reach only this step's members; retain the graph for the steps after it
            self._optimize(members, lambda: torch.autograd.backward(self._scaled(total), inputs=params,
                                                                    retain_graph=not last), t, dt)
            if last:
                self.progress.step(value)
        finally:
            self.update_step = None

    # -- signals ----------------------------------------------------------------------------------------------------
    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum, frame):
            if self._stop is not None:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._stop = signum
            self.progress.message("stopping after this step (press Ctrl-C again to abort at once)...")

        for s in previous:
            signal.signal(s, on_signal)

        def restore():
            for s, h in previous.items():
                signal.signal(s, h)

        return restore

    def _interrupt(self) -> None:
        where = f"generation {self.generation + 1} epoch {self.epoch + 1} step {self.step}"
        if self.run_dir:
            self.save_checkpoint()
            if self._writer is not None:
                self._writer.wait()
            raise Interrupted(f"interrupted at {where}; checkpoint saved, continue with: resprout resume "
                              f"{self.run_dir}")
        raise Interrupted(f"interrupted at {where}; nothing was saved (an unsaved run)")
