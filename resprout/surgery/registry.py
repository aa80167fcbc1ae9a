"""Named surgery operations, so that a run's surgery history can be replayed on a freshly built model.

A surgery changes a model's shapes (removes or adds channels, swaps layers). The trainer records each call
(member, operation name, arguments) in the checkpoint; a resumed run rebuilds its members from the configuration,
replays the history to get the same shapes, and only then loads the weights. Arguments must therefore be plain
data (numbers, strings, lists, dicts), and an operation must produce the same shapes from the same arguments.

An operation returns the new model, or a :class:`SurgeryResult` that also says, per parameter and buffer of the new
model, which old index every new index along a dimension came from (``-1``: a new one). The trainer uses that map to
carry the optimizer's state (momentum, Adam moments) over to the kept channels; new channels start at zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Union

from resprout.registry import Registry

if TYPE_CHECKING:  # the registry itself needs no torch: listing methods (resprout --help) imports it
    from torch import nn

#: new tensor name -> {dim: [old index of each new index along dim, or -1 for a new one]}; a name absent from the
#: map is unchanged (same shape, same values), a name mapped to {} is unchanged too
IndexMaps = dict[str, dict[int, list[int]]]


@dataclass
class SurgeryResult:
    model: nn.Module
    index_maps: IndexMaps = field(default_factory=dict)


SurgeryOp = Callable[..., Union["nn.Module", SurgeryResult]]
SURGERY: Registry[SurgeryOp] = Registry("surgery operation")
SURGERY.add("resize", "resprout.surgery.resize:resize_op", "keep chosen channels of coupled channel groups and add "
            "new ones (KE's slim network, NR's dead-neuron removal and widening)")


def register_surgery(name: str, *, description: str | None = None) -> Callable[[SurgeryOp], SurgeryOp]:
    """Register ``fn(model, **args) -> model`` under ``name`` (``description``: default, its docstring)."""

    def deco(fn: SurgeryOp) -> SurgeryOp:
        SURGERY.add(name, fn, description)
        return fn

    return deco


def get_surgery(name: str) -> SurgeryOp:
    return SURGERY.get(name)
