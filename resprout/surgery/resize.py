"""One surgery that removes, reorders and adds channels: :func:`resize`, registered as the ``"resize"`` operation.

A plan says, per channel group (:func:`~resprout.surgery.channels.channel_groups`), which old channel every new
channel is, or ``-1`` for a new one: ``{"layer1.0.conv1": [0, 2, 5, -1, -1]}`` keeps old channels 0, 2, 5 and adds
two. Groups absent from the plan are unchanged. Knowledge Evolution's slim fit hypothesis (Taha et al., CVPR 2021,
Sec. 3.2) is a prefix plan; Neural Rejuvenation (Qiao et al., CVPR 2019, Sec. 3.2) removes dead channels and adds
new ones in the same call.

What a layer does with its channels:

* Conv1d/2d/3d, Linear (or any module whose ``weight``/``bias`` a functional ``F.conv*``/``F.linear`` call uses):
  rows follow the output group, columns the input group. A new row (the incoming weights of a new channel) comes
  from the initializer, a new bias is 0; a new column of a kept row (the outgoing weight of a new channel into a
  consumer) is 0 when ``zero_outgoing``, so a grown network computes what it computed before.
* Depthwise convolutions (``groups == in_channels``) follow their input; ``groups`` follows the channel count.
  Other grouped convolutions keep ``groups``: the plans of the groups they read and write cut every one of their
  blocks alike (:func:`~resprout.surgery.channels.check_plan`), so rows follow the output group and columns (the
  inputs within one group) the plan of one input block.
* BatchNorm/InstanceNorm: weight, bias, running mean and variance follow; new channels get 1, 0, 0, 1.
* GroupNorm: with one channel per group, channels follow freely; otherwise only whole groups (aligned blocks of
  ``channels per group``, in order) may be kept, moved or added, so every group keeps its statistics.
* LayerNorm over the channels is refused (its statistics mix channels); over other dims it is untouched.

``init="kaiming"``: convolutions Kaiming-normal (fan_out, ReLU), as the model zoo initializes them; linear layers
torch's default, uniform in +-1/sqrt(fan_in). ``"zeros"``, or a callable ``init(tensor, generator)`` that fills the
new weight tensor in place (only its new entries are used). Each layer draws from its own ``torch.Generator`` seeded
by ``seed`` and the layer's position, never from the global RNG, so a replay gives the same values.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from resprout.errors import ConfigError
from resprout.seeding import derive_seed
from resprout.surgery.channels import (
    GroupPlan,
    channel_groups,
    check_plan,
    example_input,
    model_device,
    node_maps,
    weight_groups,
)
from resprout.surgery.graph import ChannelGraph, Op, trace
from resprout.surgery.registry import IndexMaps, SurgeryResult

Init = str | Callable[[torch.Tensor, torch.Generator], None]


def _identity(index: list[int], n: int) -> bool:
    return len(index) == n and index == list(range(n))


def _fresh(shape: torch.Size, like: torch.Tensor, kind: str, init: Init, gen: torch.Generator) -> torch.Tensor:
    t = torch.zeros(shape, dtype=like.dtype)
    if callable(init):
        init(t, gen)
    elif init == "kaiming" and kind == "conv":
        fan_out = shape[0] * math.prod(shape[2:])
        t.normal_(0.0, math.sqrt(2.0 / fan_out), generator=gen)
    elif init == "kaiming":
        bound = 1.0 / math.sqrt(shape[1]) if len(shape) > 1 and shape[1] > 0 else 0.0
        t.uniform_(-bound, bound, generator=gen)
    elif init != "zeros":
        raise ConfigError(f"unknown resize init {init!r}; use 'kaiming', 'zeros' or a callable(tensor, generator)")
    return t.to(like.device)


def _remap(old: torch.Tensor, maps: dict[int, list[int]], fill: torch.Tensor) -> torch.Tensor:
    """``old`` carried into ``fill``'s shape: entries whose every mapped index is old come from ``old``."""
    out, keep = old, torch.ones((), dtype=torch.bool, device=old.device)
    for dim, index in maps.items():
        idx = torch.tensor(index, dtype=torch.long, device=old.device)
        out = out.index_select(dim, idx.clamp(min=0))
        shape = [1] * old.dim()
        shape[dim] = len(index)
        keep = keep & (idx >= 0).view(shape)
    return torch.where(keep, out, fill.to(out.dtype))


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in module._parameters:
        old = module._parameters[name]
        module._parameters[name] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        module._buffers[name] = value


def _changed(maps: dict[int, list[int]], old: torch.Size) -> dict[int, list[int]]:
    return {d: m for d, m in maps.items() if not _identity(m, old[d])}


def _resize_layer(op: Op, module: nn.Module, graph: ChannelGraph, out_map: list[int], in_map: list[int],
                  init: Init, zero_outgoing: bool, gen: torch.Generator) -> dict[str, dict[int, list[int]]]:
    """Resize one module in place; returns its tensors' index maps (attribute name -> {dim: map})."""
    done: dict[str, dict[int, list[int]]] = {}
    if op.kind in ("conv", "linear"):
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor):
            raise ConfigError(f"cannot resize '{op.module}' ({type(module).__name__}): no 'weight' tensor found")
        c_in = graph.nodes[op.inputs[0]].channels
        groups = weight_groups(module, c_in) if op.kind == "conv" else 1
        depthwise = groups > 1 and groups == c_in
        # the inputs within one group: the whole input map for ungrouped layers, the first block's plan for grouped
        # ones (every block is cut alike; old channel j of block 0 is column j)
        cols_map = in_map if groups == 1 else in_map[:len(in_map) // groups]
        maps = {0: out_map} if depthwise else {0: out_map, 1: cols_map}
        fill = _fresh(torch.Size([len(out_map), *w.shape[1:]]) if depthwise else
                      torch.Size([len(out_map), len(cols_map), *w.shape[2:]]), w, op.kind, init, gen)
        if zero_outgoing and not depthwise:
            rows = torch.tensor([j >= 0 for j in out_map], device=w.device)
            cols = torch.tensor([j < 0 for j in cols_map], device=w.device)
            outgoing = (rows[:, None] & cols[None, :]).view(len(out_map), len(cols_map), *[1] * (w.dim() - 2))
            fill = fill.masked_fill(outgoing, 0.0)
        _set(module, "weight", _remap(w.detach(), maps, fill))
        done["weight"] = maps
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            _set(module, "bias", _remap(bias.detach(), {0: out_map}, torch.zeros(len(out_map))))
            done["bias"] = {0: out_map}
        attrs = {"out_channels": len(out_map), "in_channels": len(in_map), "out_features": len(out_map),
                 "in_features": len(in_map)}
        if depthwise:
            attrs["groups"] = len(in_map)
        for attr, value in attrs.items():
            if hasattr(module, attr):
                setattr(module, attr, value)
        return done
    if isinstance(module, nn.LayerNorm):
        return done  # over non-channel dims (over channels it is refused by channel_groups)
    if isinstance(module, nn.GroupNorm):
        cpg = module.num_channels // module.num_groups
        for b in range(0, len(out_map), cpg):
            block = out_map[b:b + cpg]
            whole = len(block) == cpg and (all(j < 0 for j in block) or
                                           (block[0] % cpg == 0 and block == list(range(block[0], block[0] + cpg))))
            if not whole:
                raise ConfigError(f"group norm '{op.module}' ({module.num_groups} groups of {cpg} channels) can only "
                                  f"keep, move or add whole groups of {cpg} channels")
        module.num_channels, module.num_groups = len(out_map), len(out_map) // cpg
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = len(out_map)
    else:
        raise ConfigError(f"cannot resize '{op.module}' ({type(module).__name__}): supported norms are BatchNorm, "
                          f"InstanceNorm, GroupNorm and LayerNorm")
    n = len(out_map)
    for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        t = getattr(module, name, None)
        if isinstance(t, torch.Tensor):
            _set(module, name, _remap(t.detach(), {0: out_map}, torch.full((n,), value)))
            done[name] = {0: out_map}
    return done


def resize(model: nn.Module, plan: GroupPlan, example: torch.Tensor, *, init: Init = "kaiming",
           zero_outgoing: bool = True, seed: int = 0) -> SurgeryResult:
    """``model`` with its channel groups resized to ``plan`` (a new module; ``model`` is untouched).

    ``index_maps`` maps every parameter and buffer of the new model whose entries moved to ``{dim: [old index or
    -1]}``. The result is run once on ``example`` (eval mode), so a forward that depends on a fixed channel count
    fails here with one line.
    """
    graph = trace(model, example)
    groups = channel_groups(graph)
    plan = check_plan(groups, plan)
    maps = node_maps(groups, plan)
    new = copy.deepcopy(model)
    index_maps: IndexMaps = {}
    seen: dict[str, tuple[list[int], list[int]]] = {}
    for op in graph.layer_ops():
        out_map, in_map = maps[op.output], maps[op.inputs[0]]
        if op.module in seen:  # a module called twice: channel_groups tied its calls
            continue
        seen[op.module] = (out_map, in_map)
        if _identity(out_map, graph.nodes[op.output].channels) and \
                _identity(in_map, graph.nodes[op.inputs[0]].channels):
            continue
        module = new.get_submodule(op.module)
        shapes = {k: t.shape for k, t in list(module.named_parameters(recurse=False))
                  + list(module.named_buffers(recurse=False))}
        gen = torch.Generator().manual_seed(derive_seed(seed, op.index))
        done = _resize_layer(op, module, graph, out_map, in_map, init, zero_outgoing, gen)
        for attr, dims in done.items():
            if _changed(dims, shapes[attr]):
                index_maps[f"{op.module}.{attr}" if op.module else attr] = _changed(dims, shapes[attr])
    modes = {id(m): m.training for m in new.modules()}
    try:
        with torch.no_grad():
            new.eval()
            new(example)
    except Exception as e:  # noqa: BLE001  (any failure of the user's forward: say it in one line)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"the resized {type(model).__name__} does not run ({first}); its forward probably depends "
                          f"on a fixed channel count") from None
    finally:
        for m in new.modules():
            m.train(modes[id(m)])
    return SurgeryResult(new, index_maps)


def resize_op(model: nn.Module, *, plan: dict, input_shape: list, init: str = "kaiming", zero_outgoing: bool = True,
              seed: int = 0) -> SurgeryResult:
    """:func:`resize` from plain data (a recorded, replayable surgery): the example is ``example_input(input_shape)``,
    a fixed batch, so the same arguments give the same shapes and the same new weights."""
    if not isinstance(init, str):
        raise ConfigError(f"surgery 'resize': init must be 'kaiming' or 'zeros' (plain data); got {init!r}")
    example = example_input(tuple(input_shape), device=model_device(model))
    return resize(model, {str(k): list(v) for k, v in plan.items()}, example, init=init,
                  zero_outgoing=zero_outgoing, seed=seed)
