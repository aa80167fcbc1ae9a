"""Named surgery operations, so that a run's surgery history can be replayed on a freshly built model.

A surgery changes a model's shapes (removes or adds channels, swaps layers). The trainer records each call
(member, operation name, arguments) in the checkpoint; a resumed run rebuilds its members from the configuration,
replays the history to get the same shapes, and only then loads the weights. Arguments must therefore be plain
data (numbers, strings, lists, dicts), and an operation must produce the same shapes from the same arguments.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from resprout.errors import ConfigError

SurgeryOp = Callable[..., nn.Module]
_OPS: dict[str, SurgeryOp] = {}


def register_surgery(name: str) -> Callable[[SurgeryOp], SurgeryOp]:
    """Register ``fn(model, **args) -> model`` under ``name``."""

    def deco(fn: SurgeryOp) -> SurgeryOp:
        _OPS[name] = fn
        return fn

    return deco


def get_surgery(name: str) -> SurgeryOp:
    try:
        return _OPS[name]
    except KeyError:
        raise ConfigError(f"unknown surgery operation {name!r}; registered: {', '.join(sorted(_OPS)) or 'none'}"
                          ) from None
