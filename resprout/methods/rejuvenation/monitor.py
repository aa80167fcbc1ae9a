"""Resource utilization monitoring (Qiao et al., "Neural Rejuvenation", CVPR 2019, Sec. 3.1).

:func:`topology` traces a model once (:mod:`resprout.surgery.graph`) and reads off what the monitor needs: every
channel group (:func:`~resprout.surgery.channels.channel_groups`, e.g. one conv layer's output channels, or all the
channels a residual add ties together), the batch norm that follows each of its writers, and every conv/linear
layer with the groups its input and output are made of.

* **Liveliness** (Sec. 3.1.1): a channel is dead when ``|gamma| < 0.01 * max|gamma|`` of its BN; a whole layer is
  dead when ``max|gamma| < 1e-3`` or when none of its inputs is live (:func:`group_liveness`). Liveness flows
  forward through the traced graph, so a layer fed only by dead channels is dead too.
* **Utilization** (Sec. 3.1.2): a layer's effective cost is ``live_in * live_out * K`` parameters (``K`` kernel
  elements), times ``O_h * O_w`` output positions for FLOPs; ``r = U / c`` summed over every conv and linear
  layer (:func:`utilization`). Biases and BN parameters are not counted. When S and R neurons are trained apart
  (NR-CR, Eq. 6) the removed cross blocks are not part of the cost, so costs take per-channel *labels* (0 = S,
  1 = R, ``None`` = connects to both, e.g. the image channels).
* **Main stream** (Sec. 4.3): channels tied by a residual add (more than one writer) are excluded by default:
  always live, no sparsity penalty, as in the paper's ResNets.

Every writer of a monitored group must be followed by a batch norm with a scale; otherwise :func:`topology`
refuses, naming the layer, when the run starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from resprout.errors import ConfigError
from resprout.surgery.channels import Group, channel_groups, check_traceable, example_input, model_device
from resprout.surgery.graph import ChannelGraph

DEAD_RATIO = 1e-2  # a channel is dead below 0.01 * max|gamma| of its layer (Sec. 3.1.1)
DEAD_LAYER = 1e-3  # a layer is dead whole when max|gamma| is below this (the official code's all-dead threshold)

Counts = dict  # label (0, 1, ... or None) -> number of channels


@dataclass
class Unit:
    """One monitored channel group: its BN scale modules (one per writer) and whether it is on the main stream."""

    key: str
    channels: int
    bns: list[str]
    writers: list[str]
    mainstream: bool


@dataclass
class Layer:
    """One conv/linear call: the groups its input and output are laid out from, ``(group key, multiplier)``."""

    module: str
    inputs: list[tuple[str, int]]
    outputs: list[tuple[str, int]]
    kernel: int  # kernel elements per (input, output) pair
    positions: int  # output positions (FLOPs)
    depthwise: bool
    first_call: bool  # parameters are counted once per module, FLOPs once per call


@dataclass
class Topology:
    graph: ChannelGraph
    groups: dict[str, Group]
    units: dict[str, Unit]  # resizable groups written by layers with BN: the ones NR can judge and resize
    layers: list[Layer]
    input_shape: tuple[int, ...]
    order: list[str] = field(default_factory=list)  # unit keys in the order their first writer runs

    def monitored(self, mainstream: str = "exclude") -> list[str]:
        """The units whose liveliness counts (and whose BN scales get the sparsity penalty)."""
        return [k for k in self.order if mainstream == "include" or not self.units[k].mainstream]


def _layout(groups: dict[str, Group], nid: int) -> list[tuple[str, int]]:
    segs = sorted((off, k, g.key) for g in groups.values() for n, off, k in g.places if n == nid)
    return [(key, k) for _, k, key in segs]


def topology(model: nn.Module, input_shape: tuple[int, ...]) -> Topology:
    """Trace ``model`` and find its monitored units and counted layers (refuses a writer without BN)."""
    example = example_input(tuple(input_shape), device=model_device(model))
    graph = check_traceable(model, example)
    groups = channel_groups(graph)
    consumers = graph.consumers()
    bn_of: dict[str, str | None] = {}
    layers: list[Layer] = []
    seen: set[str] = set()
    for op in graph.layer_ops(("conv", "linear")):
        module = graph.modules[op.module]
        bn = None
        for c in consumers.get(op.output, []):
            m = graph.modules.get(c.module) if c.kind == "norm" else None
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                bn = c.module
        bn_of.setdefault(op.module, bn)
        w = module.weight
        c_in = graph.nodes[op.inputs[0]].channels
        depthwise = op.kind == "conv" and w.shape[1] == 1 and c_in > 1 and w.shape[0] % c_in == 0 and \
            getattr(module, "groups", 1) == c_in
        out_shape = graph.nodes[op.output].shape
        positions = int(torch.tensor(out_shape[2:]).prod()) if op.kind == "conv" and len(out_shape) > 2 else 1
        layers.append(Layer(op.module, _layout(groups, op.inputs[0]), _layout(groups, op.output),
                            int(torch.tensor(w.shape[2:]).prod()) if w.dim() > 2 else 1, positions, depthwise,
                            op.module not in seen))
        seen.add(op.module)
    units: dict[str, Unit] = {}
    for key, g in groups.items():
        if not g.resizable or not g.writers:
            continue
        missing = [wr for wr in g.writers if bn_of.get(wr) is None]
        if missing:
            kind = type(graph.modules[missing[0]]).__name__
            raise ConfigError(f"layer '{missing[0]}' ({kind}) is not followed by a batch norm with a scale; Neural "
                              f"Rejuvenation and Network Slimming read liveliness from BN scales (Qiao et al. 2019, "
                              f"Sec. 3.1.1): add a BatchNorm after it")
        units[key] = Unit(key, g.channels, [bn_of[wr] for wr in g.writers], list(g.writers), len(g.writers) > 1)
    order = [k for k in groups if k in units]
    return Topology(graph, groups, units, layers, tuple(input_shape), order)


# -- liveliness ------------------------------------------------------------------------------------------------------
def bn_alive(gamma: torch.Tensor, ratio: float = DEAD_RATIO, layer: float = DEAD_LAYER) -> torch.Tensor:
    """Live channels of one BN (Sec. 3.1.1): ``|gamma| >= ratio * max|gamma|``, none if ``max|gamma| < layer``."""
    g = gamma.detach().abs()
    top = g.max() if g.numel() else torch.tensor(0.0)
    if float(top) < layer:
        return torch.zeros_like(g, dtype=torch.bool)
    return g >= ratio * top


def _propagate(topo: Topology, judged: set[str], own) -> dict[str, torch.Tensor]:
    """Live masks flowed forward through the units in run order: a unit's channel is live when one of its writers
    has a live input and ``own(key, bn)`` (that writer's BN) says it is alive. Other groups are all live."""
    live = {k: torch.ones(g.channels, dtype=torch.bool) for k, g in topo.groups.items()}
    writes = {}
    for layer in topo.layers:
        writes.setdefault(layer.module, layer)
    for key in topo.order:
        if key not in judged:
            continue
        unit = topo.units[key]
        mask = torch.zeros(unit.channels, dtype=torch.bool)
        for writer, bn in zip(unit.writers, unit.bns):
            fed = sum(int(live[k].sum()) * m for k, m in writes[writer].inputs) > 0
            if fed:
                mask |= own(key, bn)
        live[key] = mask
    return live


def group_liveness(model: nn.Module, topo: Topology, mainstream: str = "exclude") -> dict[str, torch.Tensor]:
    """Per channel group, a bool mask of live channels, propagated forward: a writer with no live input writes
    nothing live. Groups NR does not judge (the image, the classes, the main stream when excluded) are all live."""
    return _propagate(topo, set(topo.monitored(mainstream)),
                      lambda key, bn: bn_alive(model.get_submodule(bn).weight).cpu())


def bridges(topo: Topology, mainstream: str = "exclude") -> set[str]:
    """The judged units every path to the output goes through (each of VGG's layers; none of a ResNet's branch
    layers): dead whole, one alone leaves the output with no live input (:func:`cut_at`)."""
    judged = set(topo.monitored(mainstream))
    out = set()
    for key in judged:
        live = _propagate(topo, judged, lambda k, bn, dead=key: torch.full((topo.units[k].channels,), k != dead))
        if cut_at(topo, live) is not None:
            out.add(key)
    return out


def cut_at(topo: Topology, live: dict[str, torch.Tensor]) -> str | None:
    """An output layer (one that writes no monitored channel group, e.g. the classifier) none of whose input channels
    is live, or None. Liveness flows forward, so a layer dead whole on every path (VGG's chain) leaves the output
    with nothing: the network is cut, and no shared expansion rate can rebuild it (``alpha * 0`` channels)."""
    for layer in topo.layers:
        if any(key in topo.units for key, _ in layer.outputs):
            continue
        if sum(int(live[key].sum()) * mult for key, mult in layer.inputs) == 0:
            return layer.module
    return None


# -- costs -----------------------------------------------------------------------------------------------------------
def _node_counts(segs: list[tuple[str, int]], counts: dict[str, Counts]) -> Counts:
    out: Counts = {}
    for key, mult in segs:
        for label, n in counts[key].items():
            out[label] = out.get(label, 0) + n * mult
    return out


def pair_count(cin: Counts, cout: Counts) -> int:
    """Connections between input and output channels a layer really has: a channel labelled ``None`` connects to
    every channel; labelled ones only to the same label (S to S, R to R: Eq. 6) and to ``None``."""
    n_in, n_out = sum(cin.values()), sum(cout.values())
    free_in, free_out = cin.get(None, 0), cout.get(None, 0)
    same = sum(n * cout.get(label, 0) for label, n in cin.items() if label is not None)
    return free_in * n_out + (n_in - free_in) * free_out + same


def layer_costs(topo: Topology, counts: dict[str, Counts], resource: str = "params") -> dict[str, int]:
    """Cost of every conv/linear layer for per-group channel counts by label (``{group: {label: n}}``)."""
    if resource not in ("params", "flops"):
        raise ConfigError(f"unknown resource {resource!r}; use params or flops")
    out: dict[str, int] = {}
    for layer in topo.layers:
        if resource == "params" and not layer.first_call:
            continue
        cin, cout = _node_counts(layer.inputs, counts), _node_counts(layer.outputs, counts)
        n = sum(cout.values()) if layer.depthwise else pair_count(cin, cout)
        cost = n * layer.kernel * (layer.positions if resource == "flops" else 1)
        out[layer.module] = out.get(layer.module, 0) + cost
    return out


def split_counts(mask: torch.Tensor, labels: list | None) -> Counts:
    """Counts by label of the channels ``mask`` keeps (labels: one per channel, or None: all unlabelled)."""
    if labels is None:
        return {None: int(mask.sum())}
    out: Counts = {}
    for keep, label in zip(mask.tolist(), labels):
        if keep:
            out[label] = out.get(label, 0) + 1
    return out


def utilization(model: nn.Module, topo: Topology, *, resource: str = "params", mainstream: str = "exclude",
                labels: dict[str, list] | None = None) -> dict:
    """``r = U / c`` (Sec. 3.1.2) with the live masks: ``{"r", "used", "cost", "live": {group: mask}}``."""
    labels = labels or {}
    live = group_liveness(model, topo, mainstream)
    full = {k: split_counts(torch.ones(g.channels, dtype=torch.bool), labels.get(k)) for k, g in topo.groups.items()}
    used = {k: split_counts(live[k], labels.get(k)) for k in topo.groups}
    cost = sum(layer_costs(topo, full, resource).values())
    u = sum(layer_costs(topo, used, resource).values())
    return {"r": u / cost if cost else 1.0, "used": u, "cost": cost, "live": live}


def widths(topo: Topology) -> dict[str, int]:
    """Channels of every monitored unit (per-layer widths for the reports)."""
    return {k: topo.units[k].channels for k in topo.order}
