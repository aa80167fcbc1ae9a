"""The trainer: named members, generations x epochs, events, exact checkpoints.

A run trains a set of named *members* (``model``; or ``student`` and a frozen ``teacher``; or ``peer_1..K``;
or a ``discriminator``), each with its own optimizer. Every step forwards each trainable member, asks the methods
for loss terms, takes one backward pass over their sum and steps every optimizer; the members' parameters are
disjoint, so this equals separate backward passes, and a method that needs a term to reach only one member detaches
the others. See :mod:`resprout.engine.events` for the loop and its hook points.

Checkpoints hold the whole position (generation, epoch, step), every member's weights and optimizer, the surgery
history, method states, global RNG states and the metrics so far. Data order and augmentation are functions of the
position (see :mod:`resprout.data.loader`), so a run resumed from any checkpoint ends with exactly the weights and
metrics of a run that was never stopped (same device, same thread count).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resprout.config import Config
from resprout.data.loader import EvalLoader, TrainLoader
from resprout.engine import checkpoint as ckpt
from resprout.engine.distributed import DistInfo, all_reduce_sum
from resprout.engine.events import Event
from resprout.engine.method import Method, handlers
from resprout.engine.optim import OPTIM_KEYS, Schedule, build_optimizer, set_lr
from resprout.engine.progress import Progress
from resprout.engine.store import Store
from resprout.errors import CheckpointError, ConfigError, Interrupted, TrainingDiverged
from resprout.seeding import rng_state, set_rng_state
from resprout.surgery.registry import get_surgery

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class Member:
    """One network of a run. ``optim`` overrides optimizer keys of the config for this member only."""

    name: str
    model: nn.Module
    trainable: bool = True
    evaluate: bool = True
    task: bool = True  # trained on the task loss (a classifier); False for discriminators, regressors, ...
    logits: bool = True  # its output is class logits (train accuracy is counted); False for embeddings
    optim: dict = field(default_factory=dict)
    optimizer: torch.optim.Optimizer | None = None
    forward_module: nn.Module | None = None  # the model, or its DistributedDataParallel wrapper

    def __call__(self, x: torch.Tensor) -> Any:
        return (self.forward_module or self.model)(x)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[summed cross-entropy, top-1 correct, top-5 correct, count] of a batch, as one tensor."""
    loss = F.cross_entropy(logits, targets, reduction="sum")
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    hits = topk == targets[:, None]
    return torch.stack([loss, hits[:, 0].sum().to(loss.dtype), hits.any(1).sum().to(loss.dtype),
                        torch.tensor(float(len(targets)), device=loss.device)])


@torch.no_grad()
def evaluate(model: nn.Module, loader: EvalLoader, dist: DistInfo | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (fractions) of ``model`` on ``loader``, over all processes."""
    was_training = model.training
    model.eval()
    sums = None
    try:
        for x, y in loader:
            batch = classification_metrics(model(x).float(), y)
            sums = batch if sums is None else sums + batch
    finally:
        model.train(was_training)
    if sums is None:
        sums = torch.zeros(4, device=loader.device)
    sums = all_reduce_sum(sums.double(), dist or DistInfo()).tolist()
    n = max(sums[3], 1.0)
    return {"loss": sums[0] / n, "top1": sums[1] / n, "top5": sums[2] / n}


def _format_metrics(train: dict, evals: dict[str, dict]) -> str:
    text = ""
    if "loss" in train:
        text += f" train loss {train['loss']:.4f}"
    if "top1" in train:
        text += f" top1 {100 * train['top1']:.2f}"
    for split, m in evals.items():
        text += f" | {split}" + (f" loss {m['loss']:.4f}" if "loss" in m else "") + f" top1 {100 * m['top1']:.2f}"
        for key in ("top5", "nmi"):
            if key in m:
                text += f" {key} {100 * m[key]:.2f}"
    return text


class Trainer:
    """Trains ``members`` with ``methods`` on ``train`` and evaluates on ``evals`` (``{"val": ..., "test": ...}``)."""

    def __init__(self, config: Config, members: dict[str, nn.Module | Member], train: TrainLoader,
                 evals: dict[str, EvalLoader], methods: list[Method], *, device: torch.device | str = "cpu",
                 run_dir: str | Path | None = None, store: Store | None = None, run_id: str | None = None,
                 progress: Progress | None = None, dist: DistInfo | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.train_loader = train
        self.eval_loaders = evals
        self.methods = list(methods)
        self.run_dir = Path(run_dir) if run_dir else None
        self.store = store if (dist is None or dist.is_main) else None
        self.run_id = run_id
        self.progress = progress or Progress()
        self.dist = dist = dist or DistInfo()
        self.schedule = Schedule.from_config(config)
        self.members: dict[str, Member] = {}
        for name, m in members.items():
            if isinstance(m, Member):
                self.add_member(m.name, m.model, trainable=m.trainable, evaluate=m.evaluate, task=m.task,
                                optim=m.optim)
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
        self.evaluator = None
        self._accum: dict[str, torch.Tensor] = {}
        self._epoch_time = 0.0
        self._terms: list[tuple[str, str, torch.Tensor]] = []
        self.inputs: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self.outputs: dict[str, Any] = {}
        self._frozen_outputs: dict[str, Any] = {}
        self._stop: int | None = None
        self._writer: ckpt.AsyncWriter | None = None
        self._last_checkpoint = time.monotonic()
        for m in self.methods:
            m.setup(self)
        self._handlers = {e: handlers(self.methods, e) for e in Event}

    # -- members ----------------------------------------------------------------------------------------------------
    def add_member(self, name: str, model: nn.Module, *, trainable: bool = True, evaluate: bool = True,
                   task: bool = True, optim: dict | None = None) -> Member:
        """Add a network to the run (methods call this from ``setup``)."""
        if name in self.members:
            raise ConfigError(f"member {name!r} exists already")
        bad = set(optim or {}) - set(OPTIM_KEYS)
        if bad:
            raise ConfigError(f"member {name!r}: unknown optimizer keys {sorted(bad)}; allowed: {OPTIM_KEYS}")
        model = self._place(model)
        if not trainable:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
        member = Member(name, model, trainable=trainable, evaluate=evaluate, task=task and trainable,
                        optim=dict(optim or {}))
        self.members[name] = member
        self._wrap(member)
        return member

    def remove_member(self, name: str) -> None:
        del self.members[name]

    def set_model(self, name: str, model: nn.Module) -> None:
        """Replace a member's network (in ``setup``, e.g. with a new head); later changes go through surgery."""
        member = self.members[name]
        member.model = self._place(model)
        self._wrap(member)

    @property
    def trainable(self) -> list[Member]:
        return [m for m in self.members.values() if m.trainable]

    @property
    def task_members(self) -> list[Member]:
        """The trainable classifiers: the members a task loss (CE, label smoothing, ...) applies to."""
        return [m for m in self.members.values() if m.task]

    def _place(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _wrap(self, member: Member) -> None:
        member.forward_module = member.model
        if self.dist.enabled and member.trainable:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            member.forward_module = DDP(member.model, device_ids=ids)

    def optim_spec(self, member: Member) -> dict:
        spec = {k: getattr(self.config, k) for k in OPTIM_KEYS}
        spec.update(member.optim)
        return spec

    def rebuild_optimizer(self, name: str) -> None:
        """A fresh optimizer for one member (after surgery: its parameters are new objects)."""
        member = self.members[name]
        member.optimizer = build_optimizer(member.model, self.optim_spec(member)) if member.trainable else None

    def _build_optimizers(self) -> None:
        for name in self.members:
            self.rebuild_optimizer(name)

    # -- surgery ----------------------------------------------------------------------------------------------------
    def apply_surgery(self, name: str, op: str, **args: Any) -> nn.Module:
        """Change a member's shapes with the registered operation ``op``; recorded so a resume can replay it.

        The member's optimizer is rebuilt (its parameters are new objects) and its distributed wrapper renewed.
        """
        member = self._run_surgery(name, op, args)
        self.surgery.append({"member": name, "op": op, "args": args, "generation": self.generation,
                             "epoch": self.epoch, "step": self.step})
        if member.trainable and self.started:
            self.rebuild_optimizer(name)
        return member.model

    def _run_surgery(self, name: str, op: str, args: dict) -> Member:
        member = self.members[name]
        member.model = self._place(get_surgery(op)(member.model, **args))
        self._wrap(member)
        return member

    # -- helpers for methods -----------------------------------------------------------------------------------------
    def add_loss(self, member: str, name: str, value: torch.Tensor) -> None:
        """Add a loss term that trains ``member`` (named for the logs, e.g. ``ce`` or ``kd``)."""
        self._terms.append((member, name, value))

    def output_of(self, name: str) -> Any:
        """The output of member ``name`` on the current inputs: a trainable member's forward of this step, or a
        frozen member's forward in eval mode without gradients (computed once per step)."""
        if name in self.outputs:
            return self.outputs[name]
        if name not in self._frozen_outputs:
            with torch.no_grad():
                self._frozen_outputs[name] = self.members[name].model(self.inputs)
        return self._frozen_outputs[name]

    def log_generation(self, member: str, metrics: dict[str, float], *, in_results: bool = True) -> None:
        """Record per-generation metrics of a member in the store, and (unless ``in_results`` is false, for bulky
        per-layer detail) in the run's results."""
        if in_results:
            gens = self.results["generations"]
            while len(gens) <= self.generation:
                gens.append({"generation": len(gens) + 1})
            gens[self.generation].setdefault(member, {}).update({k: float(v) for k, v in metrics.items()})
        if self.store is not None:
            self.store.log_generation(self.run_id, member, self.generation, metrics)

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        """Metrics of ``model`` on a split: classification by default, or the run's ``evaluator`` (a method may
        set one, e.g. retrieval metrics for an embedding network; it must return at least ``loss`` and ``top1``)."""
        return (self.evaluator or evaluate)(model, self.eval_loaders[split], self.dist)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the training images."""
        return tuple(self.train_loader.images.shape[1:])

    @property
    def selection_split(self) -> str:
        """Where "best" is chosen: validation when the run has it, else test (reported as such)."""
        return "val" if "val" in self.eval_loaders else "test"

    def _emit(self, event: Event) -> None:
        for h in self._handlers[event]:
            h(self)

    # -- the loop ---------------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to the end (or continue from a loaded checkpoint) and return the results."""
        cfg = self.config
        restore = self._install_signal_handlers()
        self._writer = ckpt.AsyncWriter() if self.run_dir and self.dist.is_main else None
        status = "failed"
        if self.store is not None:
            self.store.set_status(self.run_id, "running")
        try:
            if self.finished:
                status = "finished"
                return self.results
            steps_per_epoch = self.train_loader.steps(0, 0)
            total = cfg.generations * cfg.epochs * steps_per_epoch
            done = (self.generation * cfg.epochs + self.epoch) * steps_per_epoch + self.step
            self.progress.start(total, done)
            self._emit(Event.FIT_START)
            while self.generation < cfg.generations:
                if not self.started:
                    self._emit(Event.GENERATION_START)
                    self._build_optimizers()
                    self.started = True
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
            if self._writer is not None:
                try:
                    self._writer.close()
                finally:
                    self._writer = None
            if self.store is not None:
                self.store.set_status(self.run_id, status)
            self.progress.close()

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
            self._train_step(x, y, e + self.step / steps, 1.0 / steps)
            self.step += 1
            if self._stop is not None:
                self._epoch_time += time.perf_counter() - t0
                self._interrupt()
            if minutes and self.run_dir and time.monotonic() - self._last_checkpoint > 60 * minutes:
                self.save_checkpoint()
        self._epoch_time += time.perf_counter() - t0

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, t: float, dt: float) -> None:
        self.inputs, self.targets = x, y
        self.outputs, self._frozen_outputs, self._terms = {}, {}, []
        for h in self._handlers[Event.BATCH_START]:
            h(self)
        trainable = self.trainable
        for m in trainable:
            self.outputs[m.name] = m(self.inputs)
        for h in self._handlers[Event.LOSS]:
            h(self)
        if not self._terms:
            raise ConfigError("no method added a loss term; add a task loss such as method=ce")
        total = self._terms[0][2] if len(self._terms) == 1 else torch.stack([v for _, _, v in self._terms]).sum()
        value = total.item()
        if self.dist.enabled:
            # every process must take the same decision (stop, or diverge) at the same step, or the others
            # would wait forever in the next collective: share both flags in one tiny reduction
            flags = torch.tensor([0.0 if math.isfinite(value) else 1.0, 1.0 if self._stop is not None else 0.0],
                                 device=self.device)
            diverged, stop = all_reduce_sum(flags, self.dist).tolist()
            if diverged and math.isfinite(value):
                value = math.nan
            if stop and self._stop is None:
                self._stop = signal.SIGTERM
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"loss is {value} at generation {self.generation + 1} epoch {self.epoch + 1} step {self.step + 1}; "
                f"stopped, the last good checkpoint is kept" + (f" in {self.run_dir}" if self.run_dir else ""))
        for m in trainable:
            m.optimizer.zero_grad(set_to_none=True)
        total.backward()
        for h in self._handlers[Event.AFTER_BACKWARD]:
            h(self)
        factor = self.schedule.factor(t, dt)
        for m in trainable:
            set_lr(m.optimizer, factor)
            m.optimizer.step()
        for h in self._handlers[Event.AFTER_STEP]:
            h(self)
        self._accumulate(len(self.targets))
        for h in self._handlers[Event.BATCH_END]:
            h(self)
        self.progress.step(value)

    def _accumulate(self, n: int) -> None:
        acc = self._accum
        with torch.no_grad():
            for member, name, v in self._terms:
                key = f"{member}/loss_{name}"
                acc[key] = acc.get(key, 0.0) + v.detach().float() * n
            for name, out in self.outputs.items():
                if self.members[name].logits and isinstance(out, torch.Tensor) and out.ndim == 2 \
                        and out.shape[0] == len(self.targets):
                    hit = (out.argmax(1) == self.targets).sum()
                    acc[f"{name}/correct"] = acc.get(f"{name}/correct", 0) + hit
                acc[f"{name}/count"] = acc.get(f"{name}/count", 0) + n

    def _train_metrics(self, member: str) -> dict[str, float]:
        acc = {k: (float(v) if not isinstance(v, torch.Tensor) else v) for k, v in self._accum.items()}
        if self.dist.enabled and acc:
            keys = sorted(acc)
            vec = torch.tensor([float(acc[k]) for k in keys], dtype=torch.float64, device=self.device)
            acc = dict(zip(keys, all_reduce_sum(vec, self.dist).tolist()))
        n = float(acc.get(f"{member}/count", 0)) or 1.0
        out: dict[str, float] = {}
        terms = {k.split("/loss_", 1)[1]: float(v) / n for k, v in acc.items() if k.startswith(f"{member}/loss_")}
        if terms:
            out["loss"] = sum(terms.values())
            if len(terms) > 1:
                out.update({f"loss_{k}": v for k, v in terms.items()})
        if f"{member}/correct" in acc:
            out["top1"] = float(acc[f"{member}/correct"]) / n
        return out

    def _finish_epoch(self) -> None:
        self._emit(Event.EPOCH_END)
        g, e = self.generation, self.epoch
        lr = self.trainable[0].optimizer.param_groups[0]["lr"] if self.trainable else 0.0
        images = self.train_loader.steps(g, e) * self.train_loader.batch_size
        every = self.config.eval_every
        evaluate_now = (e + 1) % every == 0 or e + 1 == self.config.epochs
        self.last_eval = {}
        parts = [f"gen {g + 1}/{self.config.generations} ep {e + 1}/{self.config.epochs}"]
        for name, member in self.members.items():
            if not member.evaluate:
                continue
            train = self._train_metrics(name) if member.trainable else {}
            evals = {split: self.evaluate(member.model, split) for split in self.eval_loaders} if evaluate_now else {}
            if evals:
                self.last_eval[name] = evals
                self.results["final"][name] = dict(evals.get("test", {}))
            if self.store is not None:
                extra = {"lr": member.optimizer.param_groups[0]["lr"], "seconds": self._epoch_time,
                         "images_per_second": images / max(self._epoch_time, 1e-9)} if member.trainable else {}
                self.store.log_epoch(self.run_id, name, g, e, "train", {**train, **extra})
                for split, metrics in evals.items():
                    self.store.log_epoch(self.run_id, name, g, e, split, metrics)
            self._update_best(name, evals)
            parts.append(f"{name}:" + _format_metrics(train, evals))
        parts.append(f"lr {lr:.4g} | {self._epoch_time:.1f}s")
        line = "  ".join(parts)
        self.progress.end_epoch(line)
        self._log_line(line)
        if self.last_eval:
            self._emit(Event.AFTER_EVALUATE)
        self.epoch += 1
        self.step = 0
        # the last epoch of a generation is saved by the generation's end, right after it
        if self.epoch % self.config.checkpoint_every == 0 and self.epoch < self.config.epochs:
            self.save_checkpoint()

    def _update_best(self, name: str, evals: dict[str, dict]) -> None:
        split = self.selection_split
        if split not in evals:
            return
        top1 = evals[split]["top1"]
        best = self.results["best"].get(name)
        if best is None or top1 > best["top1"]:
            self.results["best"][name] = {**evals[split],
                                          "selected_on": split, "generation": self.generation + 1,
                                          "epoch": self.epoch + 1,
                                          **({"test_top1": evals["test"]["top1"]} if split != "test" else {})}
            if self._writer is not None:
                self._writer.save(self._weights_record(name), self.run_dir / f"best-{name}.pt")

    def _finish_generation(self) -> None:
        for name, member in self.members.items():
            if member.evaluate and name in self.results["final"]:
                self.log_generation(name, {f"test_{k}": v for k, v in self.results["final"][name].items()})
        self._emit(Event.GENERATION_END)
        self.generation += 1
        self.epoch = 0
        self.step = 0
        self.started = False
        if self.generation < self.config.generations:  # after the last one, fit() saves the finished run
            self.save_checkpoint()

    def _log_line(self, line: str) -> None:
        if self.run_dir and self.dist.is_main:
            with open(self.run_dir / "train.log", "a") as fh:
                fh.write(line + "\n")

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
        raise Interrupted(f"interrupted at {where}")

    # -- checkpoints ----------------------------------------------------------------------------------------------------
    def _weights_record(self, name: str) -> dict:
        return {"format": ckpt.WEIGHTS_FORMAT, "version": ckpt.VERSION, "member": name,
                "generation": self.generation + 1, "epoch": self.epoch + 1,
                "config": self.config.to_dict(),
                "surgery": [r for r in self.surgery if r["member"] == name],
                "model": self.members[name].model.state_dict()}

    def state_dict(self) -> dict:
        return {
            "format": ckpt.FORMAT,
            "version": ckpt.VERSION,
            "fingerprint": self.config.fingerprint(),
            "config": self.config.to_dict(),
            "run_id": self.run_id,
            "position": {"generation": self.generation, "epoch": self.epoch, "step": self.step,
                         "started": self.started, "finished": self.finished},
            "members": {name: {"model": m.model.state_dict(),
                               "optimizer": m.optimizer.state_dict() if (m.optimizer and self.started) else None}
                        for name, m in self.members.items()},
            "surgery": list(self.surgery),
            "methods": {m.name: m.state_dict() for m in self.methods},
            "rng": rng_state(),
            "accum": dict(self._accum),
            "epoch_time": self._epoch_time,
            "results": self.results,
        }

    def save_checkpoint(self) -> None:
        """Queue a snapshot of the run for writing (rank 0 only; a no-op without a run directory)."""
        if self._writer is None or self.run_dir is None:
            return
        self._writer.save(self.state_dict(), self.run_dir / CHECKPOINT_NAME)
        self._last_checkpoint = time.monotonic()

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from a checkpoint written by a run with the same configuration."""
        state = ckpt.load_file(path)
        if state["fingerprint"] != self.config.fingerprint():
            raise CheckpointError(f"{path} was written by a run with another configuration; nothing was changed")
        names = set(state["members"])
        # replay surgery on the freshly built members so that shapes match, then load weights
        for rec in state["surgery"]:
            if rec["member"] not in self.members:
                raise CheckpointError(f"{path}: surgery on unknown member {rec['member']!r}")
            self._run_surgery(rec["member"], rec["op"], rec["args"])
        self.surgery = list(state["surgery"])
        if names != set(self.members):
            raise CheckpointError(f"{path} holds members {sorted(names)}, this run has {sorted(self.members)}")
        pos = state["position"]
        self.generation, self.epoch, self.step = pos["generation"], pos["epoch"], pos["step"]
        self.started, self.finished = pos["started"], pos["finished"]
        for name, m in self.members.items():
            try:
                m.model.load_state_dict(state["members"][name]["model"])
            except RuntimeError as e:
                raise CheckpointError(f"{path}: weights of {name!r} do not fit the model "
                                      f"({str(e).splitlines()[0]})") from None
            if self.started and m.trainable:
                self.rebuild_optimizer(name)
                m.optimizer.load_state_dict(state["members"][name]["optimizer"])
        for method in self.methods:
            method.load_state_dict(state["methods"].get(method.name, {}))
        self._accum = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v)
                       for k, v in state["accum"].items()}
        self._epoch_time = state["epoch_time"]
        self.results = state["results"]
        set_rng_state(state["rng"])
        if self.store is not None:
            self.store.forget_after(self.run_id, self.generation, self.epoch)
