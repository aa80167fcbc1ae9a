"""A user's own model and the run's data: does it fit, and how can a later command rebuild it?

* :func:`check_model_fits` runs one dry forward on two zero images of the data's shape before training, so that a
  model built for other input channels or another class count is one line naming both numbers, not a raw torch
  error from inside the first training step.
* :func:`factory_path` / :func:`import_factory`: a run made with ``module=MyNet`` (a class or function importable
  from a module file) records ``"pkg.mod:MyNet"`` in ``run.json``, so ``resprout slim`` / ``resume`` rebuild it
  on their own; otherwise they say how to pass it (``--module pkg.mod:Factory``, or ``module=`` in Python).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resprout.errors import ConfigError


def _logits(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def check_model_fits(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int, *,
                     data: str = "the data") -> None:
    """Raise a one-line :class:`ConfigError` unless ``model`` takes ``(N, *input_shape)`` images and returns
    ``num_classes`` scores per image. Eval mode, no grad and a forked RNG: the check changes neither the
    model (BN statistics, modes) nor any random stream, so a run with the check is the run without it."""
    c, h, w = input_shape
    param = next((p for p in model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = {m: m.training for m in model.modules()}
    called: list[tuple[str, nn.Module]] = []  # the first conv the images reach, to name it when they do not fit
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    handles = [m.register_forward_pre_hook(lambda mod, _, name=name: called.append((name, mod)) if not called
                                           else None)
               for name, m in model.named_modules() if isinstance(m, convs)]
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            out = model(torch.zeros(2, c, h, w, device=device, dtype=dtype))
    except Exception as e:  # noqa: BLE001  (any failure of the user's forward is the message)
        if called and called[0][1].in_channels != c:
            name, conv = called[0]
            hint = f", or convert the images with channels={conv.in_channels}" if conv.in_channels in (1, 3) else ""
            raise ConfigError(f"the model's first conv ({name or type(model).__name__}) takes {conv.in_channels} "
                              f"input channels but {data} has {c} ({c}x{h}x{w} images): build it for "
                              f"{c}-channel images{hint}") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"the model cannot run on {data}'s {c}x{h}x{w} images: {reason}") from None
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    logits = _logits(out)
    if logits is None or logits.dim() != 2 or logits.shape[0] != 2:
        shape = tuple(logits.shape) if logits is not None else type(out).__name__
        raise ConfigError(f"the model must return (batch, classes) scores; on a batch of 2 {c}x{h}x{w} images it "
                          f"returned {shape}")
    if logits.shape[1] != num_classes:
        raise ConfigError(f"the model outputs {logits.shape[1]} class scores but {data} has {num_classes} classes: "
                          f"build it with num_classes={num_classes}")


def factory_path(module: Any) -> str | None:
    """``"pkg.mod:Name"`` when ``module`` is a class or function that can be imported back by that name (not an
    instance, a lambda, a closure or something defined in ``__main__``), else None."""
    if isinstance(module, nn.Module) or not callable(module):
        return None
    mod, qual = getattr(module, "__module__", None), getattr(module, "__qualname__", "")
    if not mod or mod == "__main__" or not qual or "<" in qual:
        return None
    try:
        if import_factory(f"{mod}:{qual}") is not module:
            return None
    except ConfigError:
        return None
    return f"{mod}:{qual}"


def factory_dir(module: Any) -> str | None:
    """The ``sys.path`` entry the factory's module was imported from (so that a later command, started elsewhere,
    finds it again), or None."""
    mod = sys.modules.get(getattr(module, "__module__", "") or "")
    file = getattr(mod, "__file__", None)
    if not file:
        return None
    root = Path(file).resolve().parent
    depth = mod.__name__.count(".") + (1 if Path(file).name == "__init__.py" else 0)
    for _ in range(depth):
        root = root.parent
    return str(root)


def import_factory(path: str, search: list[str] | tuple[str, ...] = ()) -> Any:
    """The object named by ``"pkg.mod:Name"`` (``Name`` may be dotted), or a one-line ConfigError. When the
    module is not found, the directories in ``search`` and the current directory are tried too (a console script,
    unlike ``python -m``, does not look in the current directory)."""
    mod, sep, qual = path.partition(":")
    if not sep or not mod or not qual:
        raise ConfigError(f"bad --module {path!r}: expected package.module:Factory, e.g. mynets:SmallNet")
    try:
        try:
            obj: Any = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            extra = [d for d in (*search, os.getcwd()) if d and d not in sys.path]
            if e.name is None or not mod.startswith(e.name) or not extra:
                raise
            sys.path[:0] = extra
            obj = importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"cannot import {mod!r} for --module {path}: {type(e).__name__}: {e}") from None
    for part in qual.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"--module {path}: {mod} has no attribute {qual!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"--module {path} is not a class or function")
    return obj
