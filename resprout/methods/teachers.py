"""Teachers: frozen, eval-mode networks that distillation methods learn from.

A teacher is a resprout run directory (its last weights; ``best-<member>.pt`` only when the run has no checkpoint)
or any ``nn.Module``.
:func:`build_teachers` turns them into frozen members named ``teacher`` (one) or ``teacher_1..teacher_M`` and
refuses, with one line and before anything is trained or written, a directory that is not a run or holds no
weights, a teacher of another class count, and a teacher run trained on other data or another normalization.

Methods read what a teacher computed through :func:`teacher_logits` and :func:`teacher_feature`. Both go through
``trainer.output_of``, which forwards a frozen member once per step, in eval mode and without gradient, and keeps
the result for the rest of the step: methods composed in one run (``kd+ktan``) and the several update steps of a
batch (KTAN's discriminator, then student) share that one forward. Teacher feature taps are requested detached.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from resprout.engine.members import Member
from resprout.errors import ConfigError
from resprout.methods.detectors import check_detector

if TYPE_CHECKING:
    from resprout.engine.trainer import Trainer

__all__ = ["MODULE_PREFIX", "build_teachers", "check_same_data", "load_run_model", "require_teachers",
           "teacher_feature", "teacher_logits", "teacher_member_names", "teacher_names", "uses_teacher"]

#: how a teacher given as an ``nn.Module`` is recorded in the run's configuration (``teacher=["module:ResNet"]``)
MODULE_PREFIX = "module:"
_NAME = re.compile(r"^teacher(_\d+)?$")

# Keys of a run's configuration that decide which images it saw (a differing one is "other data") and which
# decide the normalization (mean/std are computed on the training subset, so they follow the subset's keys).
DATA_KEYS = ("data", "data_options", "image_size", "image_fit", "channels")
NORMALIZATION_KEYS = ("per_class", "data_seed", "val_split")


def teacher_names(count: int) -> list[str]:
    """Member names of ``count`` teachers: ``teacher``, or ``teacher_1..teacher_M``."""
    return ["teacher"] if count == 1 else [f"teacher_{i + 1}" for i in range(count)]


def uses_teacher(methods: list) -> list[str]:
    """The names of the methods that distil from a configured teacher."""
    return [m.name for m in methods if getattr(m, "needs_teacher", False)]


# -- loading a run's network -------------------------------------------------------------------------------------------
def load_run_model(run_dir: str | Path, *, in_channels: int, num_classes: int, member: str = "model",
                   what: str = "teacher", same_data_as: dict | None = None) -> tuple[nn.Module, dict]:
    """The network of a resprout run and the run's configuration (a dict), read through
    :class:`~resprout.engine.rundir.SavedRun`.

    The run's last weights (its checkpoint) come first, ``best-<member>.pt`` only when it has no checkpoint: a run
    without a validation split selects its best epoch on the test split, and a teacher chosen on the test split
    would leak it into the student's score. The architecture is rebuilt from the run's stored config and its
    surgery history is replayed, so a slimmed or widened network loads with its own shapes. With ``same_data_as``
    (a run config dict) the run's data keys are checked first (:func:`check_same_data`). Refuses (one line) a
    directory that is not a run or holds no weights, a custom model (pass it as an ``nn.Module`` instead), another
    class count and weights that do not fit."""
    from resprout.engine.rundir import SavedRun

    saved = SavedRun.open(run_dir, what=what)
    cfg = saved.config
    if cfg.model.startswith("custom:"):
        raise ConfigError(f"{what} {saved.path} trained a custom model ({cfg.model[7:]}); pass the network itself "
                          f"(resprout.train(..., teacher=<nn.Module>))")
    if same_data_as is not None:
        check_same_data(cfg.to_dict(), same_data_as, what)
    try:
        model = saved.model(in_channels=in_channels, num_classes=num_classes, member=member, which="last-or-best")
    except RuntimeError as e:
        state, _ = saved.weights(member, "last-or-best")
        stored = _classes_in_state(state)
        if stored is not None and stored != num_classes:
            raise ConfigError(f"{what} has {stored} classes, this run's data {num_classes}") from None
        raise ConfigError(f"{what} {saved.path}: its weights do not fit {cfg.model} with {num_classes} classes "
                          f"({str(e).splitlines()[0][:200]})") from None
    return model, cfg.to_dict()


def _classes_in_state(state: dict) -> int | None:
    """The output width of the last 2-D weight of a state dict (a classifier's, in registration order), for the
    refusal message only."""
    for key in reversed(list(state)):
        t = state[key]
        if key.endswith("weight") and isinstance(t, torch.Tensor) and t.dim() == 2:
            return int(t.shape[0])
    return None


# -- checks ------------------------------------------------------------------------------------------------------------
def check_same_data(teacher_cfg: dict, student_cfg: dict, what: str) -> None:
    """Refuse a teacher run trained on other data (source, its options, image size, channels) or another
    normalization (the per-channel mean/std come from the training subset: per_class, data_seed, val_split)."""
    for keys, kind in ((DATA_KEYS, "other data"), (NORMALIZATION_KEYS, "another normalization")):
        for k in keys:
            if teacher_cfg.get(k) != student_cfg.get(k):
                raise ConfigError(f"{what} was trained on {kind} ({k}={teacher_cfg.get(k)!r}, this run "
                                  f"{k}={student_cfg.get(k)!r}); train the teacher with the student's data keys")


def check_classes(model: nn.Module, num_classes: int, input_shape: tuple[int, ...], what: str) -> None:
    """Refuse a teacher whose output is not ``num_classes`` logits on this run's images."""
    modes = {id(m): m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters(), None)
            out = model(torch.zeros(2, *input_shape, device=p.device if p is not None else "cpu"))
    except Exception as e:  # noqa: BLE001  (any failure means the teacher cannot read these images)
        raise ConfigError(f"{what} cannot read this run's images {tuple(input_shape)} "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None
    finally:
        for m in model.modules():
            m.train(modes[id(m)])
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ConfigError(f"{what} must return class logits (batch x classes), got "
                          f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    if out.shape[1] != num_classes:
        raise ConfigError(f"{what} has {out.shape[1]} classes, this run's data {num_classes}")


def build_teachers(cfg: Any, ds: Any, modules: list[nn.Module] | None = None) -> dict[str, Member]:
    """The teacher members of a run: ``cfg.teacher`` lists run directories and ``module:<Class>`` placeholders,
    the latter filled in order from ``modules``. Every teacher is checked before anything is trained."""
    entries = [str(t) for t in (cfg.teacher or [])]
    modules = list(modules or [])
    slots = sum(e.startswith(MODULE_PREFIX) for e in entries)
    if slots != len(modules):
        raise ConfigError(f"the configuration names {slots} teacher module(s) but {len(modules)} were passed "
                          f"(pass them again: resprout.resume(dir, teacher=[...]))")
    in_channels, num_classes = ds.input_shape[0], ds.num_classes
    student = cfg.to_dict()
    out: dict[str, Member] = {}
    it = iter(modules)
    with torch.random.fork_rng(devices=[]):  # building teachers must not change the student's random stream
        for name, entry in zip(teacher_names(len(entries)), entries):
            out[name] = _teacher(name, entry, len(entries), it, in_channels, num_classes, ds, student)
    return out


def _teacher(name: str, entry: str, count: int, modules: Any, in_channels: int, num_classes: int, ds: Any,
             student: dict) -> Member:
    """One checked, frozen teacher member."""
    what = f"teacher {entry!r}" if count == 1 else f"{name} {entry!r}"
    if entry.startswith(MODULE_PREFIX):
        model = next(modules)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{what}: a teacher must be an nn.Module or a run directory, not "
                              f"{type(model).__name__}")
    else:
        model, _ = load_run_model(entry, in_channels=in_channels, num_classes=num_classes, what=what,
                                  same_data_as=student)
    from resprout.data.detection.loaders import DetectionData  # here: the pure functions load no data package

    if isinstance(ds, DetectionData):
        check_detector(model, num_classes, what)
    else:
        check_classes(model, num_classes, tuple(ds.input_shape), what)
    return Member(name, model, trainable=False, evaluate=False, task=False, logits=True, manual=True)


# -- reading teachers in a method --------------------------------------------------------------------------------------
def teacher_member_names(trainer: Trainer) -> list[str]:
    """The run's teacher members, in order."""
    return [n for n in trainer.members if _NAME.match(n)]


def require_teachers(trainer: Trainer, method: str) -> list[str]:
    """The teacher members, or a one-line refusal naming how to give one."""
    names = teacher_member_names(trainer)
    if not names:
        raise ConfigError(f"method={method} needs a teacher: teacher=DIR (a resprout run directory) or, in Python, "
                          f"resprout.train(..., teacher=<nn.Module>)")
    return names


def teacher_logits(trainer: Trainer, names: list[str] | None = None, inputs: torch.Tensor | None = None
                   ) -> list[torch.Tensor]:
    """Every teacher's logits on the step's inputs: forwarded once per step, in eval mode, without gradient.
    ``inputs``: another batch of this step (a member with its own data stream); also forwarded once per step."""
    names = names or teacher_member_names(trainer)
    if inputs is None or inputs is trainer.inputs:
        return [trainer.output_of(n) for n in names]
    cache = trainer.scratch.setdefault("teacher_logits", {})  # scratch lives for one batch
    out = []
    for n in names:
        key = (n, id(inputs))
        if key not in cache:
            with torch.no_grad():
                cache[key] = trainer.members[n].model(inputs)
        out.append(cache[key])
    return out


def teacher_feature(trainer: Trainer, name: str, path: str) -> torch.Tensor:
    """Teacher ``name``'s tapped feature ``path`` on the step's inputs (tap it first with ``detach=True``)."""
    trainer.output_of(name)  # the step's single forward fills the tap
    return trainer.taps.output(name, path)


# -- configuration -----------------------------------------------------------------------------------------------------
def split_teacher_arg(value: Any) -> tuple[list[str], list[nn.Module]]:
    """``resprout.train(teacher=...)``: a module, a run directory, or a list of them, as (config entries, modules);
    a module is recorded as ``module:<Class>`` and passed to the trainer apart."""
    if value is None:
        return [], []
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    entries: list[str] = []
    modules: list[nn.Module] = []
    for item in items:
        if isinstance(item, nn.Module):
            entries.append(f"{MODULE_PREFIX}{type(item).__name__}")
            modules.append(item)
        elif isinstance(item, (str, Path)):
            entries.append(str(item))
        else:
            raise ConfigError(f"teacher must be an nn.Module, a run directory or a list of them, not "
                              f"{type(item).__name__}")
    return entries, modules


def teacher_entries(cfg: Any, methods: list) -> list[str]:
    """``cfg.teacher`` with run directories made absolute (a resume from elsewhere finds them), after refusing a
    teacher given to methods that use none and a method that needs one without it."""
    entries = [str(t) for t in (cfg.teacher or [])]
    users = uses_teacher(methods)
    if entries and not users:
        raise ConfigError(f"teacher= given but method={cfg.method} uses no teacher (methods that do: kd, fitnet, "
                          f"at, dln, ktan)")
    if users and not entries:
        raise ConfigError(f"method={users[0]} needs a teacher: teacher=DIR (a resprout run directory) or, in "
                          f"Python, resprout.train(..., teacher=<nn.Module>)")
    return [e if e.startswith(MODULE_PREFIX) else str(Path(e).expanduser().resolve()) for e in entries]
