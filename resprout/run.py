"""Runs: from a configuration to a trained, stored, resumable result.

This is the Python face of ``resprout train`` and ``resprout resume``::

    import resprout
    result = resprout.train(data="digits", model="cnn", epochs=3, seed=0)
    result["final"]["model"]["top1"]

    # any nn.Module, or better a factory of one (the seed then sets its initial weights, and methods that need a
    # fresh network can build one); pass it again to resume:
    result = resprout.train(module=MyNet, data="fashion-mnist", per_class=100, method="ls", out="runs/mine")

A run directory holds ``run.json`` (the run's id, its resolved configuration and the store it reports to),
``checkpoint.pt`` (everything a resume needs), ``best-<member>.pt`` (the best weights) and ``train.log``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from resprout import __version__
from resprout.config import (RESUME_KEYS, RUNTIME_KEYS, Config, config_from_dict, is_validated, make_config,
                             read_config_file)
from resprout.data import Dataset
from resprout.data.user import check_same_data, is_user_source, user_config_keys, user_dataset
from resprout.engine.checkpoint import remove_stale_temporaries
from resprout.engine.distributed import (
    DistInfo,
    broadcast_object,
    init_from_env,
    shutdown,
)
from resprout.engine.loggers import parse_logger_names, split_loggers
from resprout.engine.precision import check_compile, cpu_capability, native_bf16, reading, resolved_keys
from resprout.engine.progress import Progress, make_progress
from resprout.engine.rundir import RUN_FILE, RunLock, SavedRun, read_run_file, write_run_file  # noqa: F401
from resprout.engine.store import Store, default_store_path
from resprout.engine.trainer import CHECKPOINT_NAME, Trainer
from resprout.errors import (
    CheckpointError,
    ConfigError,
    ResproutError,
    TrainingDiverged,
)
from resprout.hardware import cpu_name
from resprout.inputs import build_dataset, build_eval_loaders, build_loaders, check_detection, check_task, data_task
from resprout.methods import build_methods, resolved_options
from resprout.methods.registry import check_method_objects, method_list, recorded_objects
from resprout.methods.teachers import build_teachers, split_teacher_arg, teacher_entries
from resprout.models import build_model
from resprout.models.fit import check_model_fits, factory_dir, factory_path, import_factory
from resprout.seeding import seed_everything


def resolve_device(name: str, dist: DistInfo | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu")
        if name == "cuda" and dist is not None and dist.enabled:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_dirty() -> bool | None:
    """Whether the package's files differ from its commit (changed or new files under resprout/), None outside git:
    a result of uncommitted code cannot be traced to a commit."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, dist: DistInfo) -> dict:
    """Versions, threads and hardware: stored with every run so that results can be told apart honestly."""
    return {"resprout": __version__, "git_commit": _git_commit(), "git_dirty": _git_dirty(),
            "python": sys.version.split()[0],
            "torch": torch.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "device": str(device), "cuda": torch.version.cuda, "world_size": dist.world_size,
            "hostname": socket.gethostname(), "cpu": cpu_name(), "cpu_capability": cpu_capability(),
            "native_bf16": native_bf16(device)}


# -- building the pieces ------------------------------------------------------------------------------------------------
def _say(progress: Progress | str | None, cfg: Config, dist: DistInfo) -> Callable[[str], None] | None:
    """Where the run states what it does before training (the data's size in memory): the progress output of
    the main process, if any."""
    if not dist.is_main:
        return None
    if isinstance(progress, Progress):
        return progress.message
    if (progress or cfg.progress) == "none":
        return None
    return lambda line: print(line, file=sys.stderr, flush=True)


ModelFactory = Callable[[], nn.Module]


def _make_model(module: nn.Module | ModelFactory | None, cfg: Config, ds) -> tuple[nn.Module, ModelFactory | None]:
    """The run's model and a factory of fresh ones (for methods that re-draw a network: KE's reinit=initial,
    Born-Again students). ``module`` is an ``nn.Module``, a factory (a class or function without arguments, called
    after ``seed`` is set, so the seed decides a custom model's initial weights), or None for ``cfg.model``."""
    if module is None:
        def factory() -> nn.Module:
            return build_model(cfg.model, in_channels=ds.input_shape[0], num_classes=ds.num_classes,
                               **cfg.model_kwargs())
    elif isinstance(module, nn.Module):
        return module, None  # a built network: methods that need a fresh one refuse at the start
    elif callable(module):
        def factory() -> nn.Module:
            net = module()
            if not isinstance(net, nn.Module):
                raise ConfigError(f"the model factory returned {type(net).__name__}, not an nn.Module")
            return net
    else:
        raise ConfigError(f"module must be an nn.Module or a factory that builds one, not {type(module).__name__}")
    return factory(), factory


def _module_name(module) -> str:
    return type(module).__name__ if isinstance(module, nn.Module) else getattr(module, "__name__", "factory")


def resolve(cfg: Config, *, module: nn.Module | ModelFactory | None = None, methods: Sequence = (),
            data: Dataset | None = None) -> tuple[Config, list]:
    """The run's configuration resolved, in order, and its built methods: the user's data (``data=user`` and the
    data's fingerprint, :func:`resprout.data.user.user_config_keys`), a custom model (``model=custom:<Class>``),
    the loggers (checked), ``precision`` and ``channels_last`` for this machine (refusing what its device cannot
    run), the methods (``methods``: the Method objects of ``train(methods=[...])``, validated) with their default
    options filled in, and the teachers (run directories made absolute). The stored config is this one, complete.

    The config is rebuilt and validated once, at the end, and only when a step changed something: resolving a
    resolved config returns the same object."""
    changes: dict = {}
    if data is not None:
        user = user_config_keys(cfg.to_dict(), data)
        changes.update({k: user[k] for k in ("data", "data_options") if user[k] != getattr(cfg, k)})
    if module is not None and not cfg.model.startswith("custom:"):
        changes["model"] = f"custom:{_module_name(module)}"
    parse_logger_names(cfg.loggers)
    device = resolve_device(cfg.device)
    step = dataclasses.replace(cfg, **changes)  # what the next steps read (not validated yet: make_config below)
    changes.update({k: v for k, v in resolved_keys(step, device).items() if getattr(cfg, k) != v})
    if cfg.compile:
        check_compile(device)
    step = dataclasses.replace(cfg, **changes)
    methods = build_methods(step, methods)
    for key, value in (("method_options", resolved_options(methods)), ("teacher", teacher_entries(step, methods))):
        if value != getattr(cfg, key):
            changes[key] = value
    if changes:
        cfg = make_config({**cfg.to_dict(), **changes})
    return cfg, methods


# -- run directories ------------------------------------------------------------------------------------------------------
def _default_run_dir(cfg: Config, store_path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    model = cfg.model.replace(":", "-")
    base = f"{stamp}-{cfg.data}-{model}-{cfg.method}-s{cfg.seed}"
    store_path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):  # a random suffix and an exclusive mkdir: two runs never share a directory
        path = store_path.parent / f"{base}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise CheckpointError(f"cannot create a new run directory under {store_path.parent}")


def _config_difference(a: dict, b: dict) -> str:
    diffs = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "; ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else "")


def _claim_run_dir(cfg: Config, out: Path | None, store_path: Path) -> tuple[Path, str, bool, bool]:
    """(run directory, run id, whether it continues an existing run, whether this call created the directory)
    for a new ``train`` call."""
    if out is None:
        run_dir = _default_run_dir(cfg, store_path)
        return run_dir, uuid.uuid4().hex[:12], False, True
    else:
        run_dir = out
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"--out {run_dir} exists and is not a directory")
        if SavedRun.exists(run_dir):
            saved = SavedRun.open(run_dir)
            if saved.config.fingerprint() != cfg.fingerprint():
                raise CheckpointError(f"{run_dir} holds a run with another configuration "
                                      f"({_config_difference(saved.config.identity(), cfg.identity())}); nothing "
                                      f"was overwritten: choose another --out")
            return run_dir, saved.run_id, True, False
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise CheckpointError(f"{run_dir} exists, is not empty and is not a resprout run directory; nothing "
                                  f"was overwritten: choose another --out")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    return run_dir, run_id, False, created


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _lock(run_dir: Path) -> RunLock | None:
    """Rank 0 locks the run directory for as long as it trains there (a second process is refused)."""
    return RunLock(run_dir).acquire() if _is_main_rank() else None


def _release(lock: RunLock | None) -> None:
    if lock is not None:
        lock.release()


def _undo_new_run(run_dir: Path, run_id: str, store_path: Path, created: bool) -> None:
    """A new run refused before its first checkpoint leaves no directory behind, and its store row (if one was
    written; the store has no delete) is marked failed."""
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
    elif run_dir.is_dir():  # an empty directory given as --out: empty it again
        for child in run_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    try:
        if Path(store_path).exists():
            with Store(store_path, create=False) as store:
                if store.run(run_id) is not None:
                    store.set_status(run_id, "failed")
    except Exception:  # noqa: BLE001, S110  (the original error is the one to show)
        pass


# -- the entry points -------------------------------------------------------------------------------------------------------
def create_trainer(cfg: Config, *, run_dir: Path | None, run_id: str | None, store_path: Path | None,
                   module: nn.Module | None = None, progress: Progress | str | None = None, continuing: bool = False,
                   dist: DistInfo | None = None, load_config: Config | None = None,
                   teachers: list[nn.Module] | None = None, data: Dataset | None = None,
                   loggers: list | None = None, methods: Sequence = ()) -> Trainer:
    """Build data, members, methods and the trainer of ``cfg``; load the checkpoint of a continuing run.
    ``data``: the user's own dataset of a ``data=user`` run (:func:`resprout.data.user.user_dataset`).
    ``teachers``: the teacher modules the config records as ``module:<Class>`` (in order). ``methods``: Method
    classes or instances for names of ``cfg.method`` (see :func:`train`)."""
    device = resolve_device(cfg.device)
    dist = dist or init_from_env(device)
    device = resolve_device(cfg.device, dist)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    objects = methods  # as given; from here on `methods` are the built ones
    cfg, methods = resolve(cfg, module=module, methods=objects)  # train() resolved it already: nothing changes
    ds = build_dataset(cfg, data, say=_say(progress, cfg, dist))
    check_detection(cfg, ds, methods, module, dist)
    seed_everything(cfg.seed)
    model, factory = _make_model(module, cfg, ds)
    if module is not None:  # a user's network built for other data: one line naming both numbers, now
        check_model_fits(model, ds.input_shape, ds.num_classes, data=f"data {cfg.data}")
    train, evals = build_loaders(cfg, ds, methods, device, dist)
    full_evals = build_eval_loaders(cfg, ds, train.normalize, device, DistInfo()) if dist.enabled else None
    teacher_members = build_teachers(cfg, ds, teachers)  # refused here, before anything is written
    if run_dir is not None and dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
    if progress is None or isinstance(progress, str):
        progress = make_progress((progress or cfg.progress) if dist.is_main else "none")
    # The trainer is built (the methods' setup checks run) and a continuing run's checkpoint loaded before the
    # run's files and its store row are written: a run refused by either leaves the store as it was.
    trainer = Trainer(cfg, {"model": model, **teacher_members}, train, evals, methods, device=device,
                      run_dir=run_dir, store=None,
                      run_id=run_id, progress=progress, dist=dist, full_evals=full_evals, model_factory=factory,
                      loggers=loggers, task=data_task(ds))
    check_task(cfg, ds, trainer.task)
    trainer.dataset = ds
    if continuing and run_dir is not None and (run_dir / CHECKPOINT_NAME).exists():
        _load_with_overrides(trainer, run_dir / CHECKPOINT_NAME, load_config)
    if run_dir is not None and dist.is_main:
        if not continuing:
            info = {"run_id": run_id, "store": str(Path(store_path).resolve()), "config": cfg.to_dict(),
                    "fingerprint": cfg.fingerprint(), "created": time.time(), "resprout": __version__}
            if factory_path(module):  # lets `resprout slim` / `resume` rebuild a custom model by themselves
                info["module"], info["module_dir"] = factory_path(module), factory_dir(module)
            recorded = recorded_objects(objects)
            if recorded:  # the method classes a resume needs again
                info["method_objects"] = recorded
            write_run_file(run_dir, info)
        store = Store(store_path)
        try:
            store.register_run(run_id, str(run_dir.resolve()), cfg.to_dict(), cfg.fingerprint(),
                               cfg.fingerprint(without_seed=True), environment(device, dist))
            if continuing:  # drop what was logged after the checkpoint (all of it: killed before the first one)
                store.forget_after(run_id, trainer.generation, trainer.epoch)
        except BaseException:
            store.close()
            raise
        trainer.store = store
    return trainer


def _close_store(trainer: Trainer) -> None:
    """Close the run's store connection when the run ends: the last connection to close moves the WAL into the
    store file and removes its ``-wal``/``-shm`` sidecars (left behind by a process that exits with it open)."""
    if trainer.store is not None:
        trainer.store.close()
        trainer.store = None


def _load_with_overrides(trainer: Trainer, path: Path, load_config: Config | None) -> None:
    """Load the checkpoint; with ``load_config`` (the run's config with the optimizer keys the checkpoint was
    written with) the checkpoint is checked against that, then the optimizers are rebuilt with the new keys (their
    state, momentum and Adam moments, carried over when the optimizer kind is unchanged)."""
    if load_config is None:
        trainer.load_checkpoint(path)
        return
    new = trainer.config
    trainer.config = load_config
    try:
        trainer.load_checkpoint(path)
    finally:
        trainer.config = new
    if not trainer.started or all(getattr(load_config, k) == getattr(new, k) for k in RESUME_KEYS):
        return
    for name, m in trainer.members.items():
        old = m.optimizer
        if old is None:
            continue
        trainer.rebuild_optimizer(name)
        if type(m.optimizer) is type(old):
            for p, st in old.state.items():
                m.optimizer.state[p] = st


def _finish(trainer: Trainer, results: dict) -> dict:
    if trainer.run_dir is not None and trainer.dist.is_main:  # methods return data; analysis draws it
        from resprout.analysis.plots import write_result_plots

        write_result_plots(results, trainer.run_dir)
    return {"run_dir": str(trainer.run_dir) if trainer.run_dir else None, "run_id": trainer.run_id,
            "status": "finished", "method": trainer.config.method, "model": trainer.config.model,
            "data": trainer.config.data, "seed": trainer.config.seed, **results}


def train(config: Config | str | Path | None = None, *, out: str | Path | None = None,
          module: nn.Module | ModelFactory | None = None, train: Any = None, val: Any = None, test: Any = None,
          store: str | Path | None = None, progress: Progress | str | None = None, save: bool = True,
          teacher: Any = None, methods: Sequence | None = None, **keys: Any) -> dict:
    """Train a run and return its results (``run_dir``, ``final``, ``best``, ``generations``).

    Example::

        resprout.train(data="fashion-mnist", per_class=100, model="resnet20", method="ke+ls", generations=5,
                       ke={"split_rate": 0.5}, ls={"smoothing": 0.1}, seed=0)

    Every key of ``resprout keys`` can be given by name; a method's options as a dict (``ke={"split_rate": 0.3}``,
    as a ``[ke]`` table in a TOML file) or dotted (``**{"ke.split_rate": 0.3}``).

    ``module``: your own network instead of ``model=``: a class or function building it (preferred: the seed then
    sets its initial weights, methods that need a fresh network can build one, and ``resprout slim`` / ``resume``
    can rebuild it by its import path), or a built ``nn.Module``. It must take the data's images and return one
    score per class: a dry forward checks that before training.

    ``train``, ``test`` (and optionally ``val``): your own data instead of ``data=``: a torch ``Dataset`` of
    ``(image, label)`` pairs (uint8 or ``ToTensor()`` images) or an ``(images, labels)`` pair of tensors
    (:mod:`resprout.data.user`). ``per_class``, ``val_split``, ``augment`` and the seeded order apply as for a
    built-in source; the run stores a fingerprint of the data, and resuming it needs the same data again.

    ``config`` is a :class:`Config`, a TOML/YAML file, or None; ``keys`` override it (``epochs=3``, or
    ``method_options={"ls": {"smoothing": 0.2}}``). ``out`` is the run directory (default: a new one beside the
    store); an existing run directory with the same configuration is continued, one with another configuration is
    refused. ``save=False`` trains in memory: no directory, no store, no checkpoints. ``teacher``: an
    ``nn.Module``, a run directory or a list of them, for the methods that distil from a teacher (kd, ktan, ...).

    ``loggers``: the dashboard logs, ``"csv"`` (default: ``metrics.csv`` in the run directory), ``"csv,tensorboard"``
    or ``"none"``; a list may also hold your own logger objects (``log_hparams(config)``,
    ``log_metrics(step, member, metrics)``, ``close()``: :class:`resprout.engine.loggers.Logger`).

    ``methods``: the run's methods as a list of names, :class:`~resprout.engine.method.Method` subclasses or
    instances (``methods=["ke", MyMethod, LabelSmoothing(smoothing=0.2)]``), none of them registered; the stored
    configuration records their names (``method=ke+mine+ls``) and options. With ``method=`` given too, the objects
    stand for names in it. An instance is used as it is (it is trained: pass a fresh one per run). A resume of a run
    whose methods were classes of your own needs them again (``resume(dir, methods=[MyMethod])``).
    """
    teachers: list[nn.Module] = []
    if teacher is not None:
        keys["teacher"], teachers = split_teacher_arg(teacher)
    user_loggers = _user_loggers(keys)
    objects = method_list(methods, keys)
    if isinstance(config, (str, Path)):  # the file and the keys are validated together, once
        cfg = make_config({**read_config_file(config), **keys})
    else:
        cfg = config or Config()
        if keys or not is_validated(cfg):  # a config of load_config/make_config is validated already
            cfg = make_config({**cfg.to_dict(), **keys})
    user_data = None
    if train is not None or test is not None or val is not None:  # read once, before anything is written
        user_data = user_dataset(train, test, val)
    probe, _ = resolve(cfg, module=module, methods=objects, data=user_data)  # decides the directory
    device = resolve_device(probe.device)
    dist = init_from_env(device)
    if not save:
        trainer = create_trainer(probe, run_dir=None, run_id=None, store_path=None, module=module,
                                 progress=progress, dist=dist, teachers=teachers, data=user_data,
                                 loggers=user_loggers, methods=objects)
    else:
        store_path = Path(store) if store else default_store_path()
        claim = _claim_run_dir(probe, Path(out) if out else None, store_path) if dist.is_main else None
        run_dir, run_id, continuing, created = broadcast_object(claim, dist)
        if continuing:
            saved = SavedRun.open(run_dir)
            store_path = saved.store
            check_method_objects(run_dir, saved.info.get("method_objects", {}), probe.method_names(), objects)
        lock = _lock(run_dir) if dist.is_main else None  # refused: another process owns the directory
        try:
            try:
                trainer = create_trainer(probe, run_dir=run_dir, run_id=run_id, store_path=store_path,
                                         module=module, progress=progress, continuing=continuing, dist=dist,
                                         teachers=teachers, data=user_data, loggers=user_loggers,
                                         methods=objects)
                return _fit_and_finish(trainer, dist)
            except TrainingDiverged:  # its message says how to go on from the directory
                raise
            except ResproutError:  # refused (or interrupted) before its first checkpoint: leave nothing behind
                if not continuing and dist.is_main and not (run_dir / CHECKPOINT_NAME).exists():
                    _release(lock)
                    _undo_new_run(run_dir, run_id, store_path, created)
                raise
        finally:
            _release(lock)
    return _fit_and_finish(trainer, dist)


def _user_loggers(keys: dict) -> list:
    """Take the logger objects out of a ``loggers=[...]`` list (its names stay the ``loggers`` key)."""
    if not isinstance(keys.get("loggers"), (list, tuple)):
        return []
    names, objects = split_loggers(keys.pop("loggers"))
    if names is not None:
        keys["loggers"] = names
    return objects


def _fit_and_finish(trainer: Trainer, dist: DistInfo) -> dict:
    try:
        result = _finish(trainer, trainer.fit())
    finally:
        _close_store(trainer)
    trainer.release_wrappers()
    shutdown(dist)  # on an error the group is left to torchrun, which tears the processes down
    return result


def _reopen_inputs(saved: SavedRun, cfg: Config, module: Any, train: Any, val: Any, test: Any,
                   methods: Sequence | None = None) -> tuple[Any, Dataset | None, list]:
    """The model factory, the user data and the method objects a saved run needs to be rebuilt, or a one-line
    ConfigError saying how to pass them. ``module`` may be an import path (``pkg.mod:Factory``, the CLI's
    ``--module``)."""
    run_dir, info = saved.path, saved.info
    if isinstance(module, str):
        module = import_factory(module)
    if cfg.model.startswith("custom:") and module is None:
        if info.get("module"):  # recorded when the run was made with an importable factory
            module = import_factory(info["module"], [info["module_dir"]] if info.get("module_dir") else [])
        else:
            raise ConfigError(f"{run_dir} trained a custom model ({cfg.model[7:]}) that cannot be imported by "
                              f"name; pass it: --module package.module:Factory (or module= in Python)")
    data = None
    if is_user_source(cfg.data):
        data = user_dataset(train, test, val) if (train is not None or test is not None) else None
        check_same_data(cfg.data_options, data, str(run_dir))
    objects = list(methods or [])
    check_method_objects(run_dir, info.get("method_objects", {}), cfg.method_names(), objects)
    return module, data, objects


def resume(run_dir: str | Path, *, module: nn.Module | ModelFactory | str | None = None,
           progress: Progress | str | None = None, teacher: Any = None, train: Any = None, val: Any = None,
           test: Any = None, methods: Sequence | None = None, **runtime: Any) -> dict:
    """Continue the run in ``run_dir`` from its checkpoint.

    ``runtime`` may change device, threads and progress, and the optimizer keys of :data:`RESUME_KEYS` (``lr`` after
    a divergence, say): such a change is recorded in ``run.json`` (``config_history``) and becomes the run's
    configuration. A resume that is refused changes nothing. ``teacher``: the teacher modules of a run that was
    given ``nn.Module`` teachers (run-directory teachers are found again by themselves). ``module``: the custom
    model's factory (or ``"pkg.mod:Factory"``) when the run did not record an importable one; ``train``, ``val``,
    ``test``: the same data again for a run trained on data from Python code; ``methods``: the Method classes (or
    instances) again of a run trained with ``methods=[...]`` of your own."""
    opened = SavedRun.open(run_dir)
    run_dir, info, saved = opened.path, opened.info, opened.config_dict
    user_loggers = _user_loggers(runtime)
    bad = set(runtime) - set(RUNTIME_KEYS) - set(RESUME_KEYS)
    if bad:
        raise ConfigError(f"resume cannot change {', '.join(sorted(bad))}; it can change only "
                          f"{', '.join(RUNTIME_KEYS + RESUME_KEYS)}")
    cfg = config_from_dict({**saved, **runtime})
    module, data, objects = _reopen_inputs(opened, cfg, module, train, val, test, methods)
    old = opened.config.to_dict()
    new = cfg.to_dict()
    changed = {k: new[k] for k in RESUME_KEYS if old.get(k) != new.get(k)}
    lock = _lock(run_dir)
    try:
        path = opened.checkpoint_path
        load_cfg, position = None, None
        if path.exists():  # every check before anything is written: a refused resume changes nothing
            state = opened.checkpoint()
            if state.get("run_id") != info["run_id"]:
                raise CheckpointError(f"{path} belongs to run {state.get('run_id')}, not to run {info['run_id']} of "
                                      f"{run_dir / RUN_FILE}; nothing was changed")
            load_cfg = config_from_dict({**new, **{k: state["config"][k] for k in RESUME_KEYS
                                                   if k in state["config"]}})
            if load_cfg.fingerprint() != state["fingerprint"]:
                raise CheckpointError(f"{path} was written by a run with another configuration "
                                      f"({_config_difference(state['config'], saved)}); nothing was changed")
            position = {k: state["position"][k] for k in ("generation", "epoch", "step")}
        trainer = create_trainer(cfg, run_dir=run_dir, run_id=info["run_id"], store_path=Path(info["store"]),
                                 module=module, progress=progress, continuing=True, load_config=load_cfg,
                                 teachers=split_teacher_arg(teacher)[1], data=data, loggers=user_loggers,
                                 methods=objects)
        if changed and _is_main_rank():
            info = dict(info)
            info["config"] = {**saved, **{k: trainer.config.to_dict()[k] for k in changed}}
            info["fingerprint"] = config_from_dict(info["config"]).fingerprint()
            info.setdefault("config_history", []).append(
                {"time": time.time(), "changed": {k: [old.get(k), new[k]] for k in changed}, "at": position})
            write_run_file(run_dir, info)
        try:
            result = _finish(trainer, trainer.fit())
        finally:
            _close_store(trainer)
    finally:
        _release(lock)
    trainer.release_wrappers()
    shutdown(trainer.dist)
    return result


def open_run(run_dir: str | Path, *, module: nn.Module | ModelFactory | str | None = None, device: str | None = None,
             train: Any = None, val: Any = None, test: Any = None, methods: Sequence | None = None) -> Trainer:
    """The trainer of a saved run with its latest checkpoint loaded, for reading (no store, no new checkpoints).
    ``module``, ``train``, ``val``, ``test``, ``methods``: as for :func:`resume`."""
    saved = SavedRun.open(run_dir)
    cfg = config_from_dict({**saved.config_dict, **({"device": device} if device else {}), "progress": "none",
                            "compile": False})  # a runtime key: reading needs no compiler
    path = saved.require_checkpoint()  # refused (one line) before anything is built when there is none
    module, data, objects = _reopen_inputs(saved, cfg, module, train, val, test, methods)
    with reading():  # a bf16 run is read in bf16 even where the device only emulates it
        trainer = create_trainer(cfg, run_dir=None, run_id=saved.run_id, store_path=None, module=module,
                                 dist=DistInfo(), data=data, methods=objects)
    trainer.load_checkpoint(path)
    return trainer
