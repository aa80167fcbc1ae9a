"""Channel groups of a traced model, and per-layer channel plans and masks.

:func:`channel_groups` reads a :class:`~resprout.surgery.graph.ChannelGraph` and finds every set of feature-map
channels that must be resized together (a *group*): a residual add ties its inputs into one group, a concatenation
lays its chunk groups side by side, a depthwise convolution's output is its input's group (each channel repeated
``multiplier`` times), BN and elementwise calls keep their input's groups, a flatten spreads channel ``c`` over
features ``c*HW ... (c+1)*HW - 1``, a softmax over the channels keeps them in place (it blocks cutting them unless
they are the network's output classes). A group is named by the module path of the first conv/linear that writes
it (``"layer1.0.conv1"``); the image channels are ``"input"`` and the network's output channels ``"output"``.
Surgery plans are written per group (:mod:`resprout.surgery.resize`, Knowledge Evolution's prefix plan).

A grouped convolution (``1 < groups < in_channels``; ResNeXt, RegNet) splits the channels it reads and the ones it
writes into ``groups`` equal blocks, output block ``j`` reading input block ``j`` only. Both groups stay resizable
with :attr:`Group.blocks` set: a plan must cut every block alike (the same channels of each block, in block
order), so every group of the convolution keeps the same width and its weight one index map per dim. Two grouped
convolutions on one group must split it in nested blocks (one count dividing the other); a grouped convolution
that reads channels of several groups (a concatenation) or repeated ones (a depthwise multiplier) blocks them.

:func:`check_traceable` traces a model and runs every refusal of channel surgery at once (when a run starts).
:func:`node_maps` expands a group plan to every feature map, :func:`layer_plans` to every layer,
:func:`layer_masks` to binary weight masks and :func:`zero_outside` zeroes what a plan drops in the dense network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from resprout.errors import ConfigError
from resprout.surgery.graph import ChannelGraph, trace

#: group key -> for each new channel, the old channel it is (>= 0) or -1 for a new one
GroupPlan = dict[str, list[int]]
#: feature map (node id) -> for each of its new channels, the old channel or -1
NodePlan = dict[int, list[int]]

# Why a group cannot be resized. The first three are fixed by the network itself (the image, the classes, channels
# written by a call that cannot be resized); "blocked" means a consumer cannot follow a change of its channels.
FIXED_KINDS = ("input", "output", "source")


@dataclass
class Group:
    """One set of channels resized together.

    ``places``: where the group lives, as (node id, offset, multiplier): channel ``c`` of the group is channels
    ``offset + c*m ... offset + c*m + m - 1`` of that feature map. ``kind`` is ``"free"`` (resizable) or one of
    ``input``/``output``/``source``/``blocked``, with ``reason`` the one-line why. ``blocks``: the number of equal
    blocks a grouped convolution splits the group into (1: none), which every plan must cut alike; ``grouping``
    says which convolution, for messages.
    """

    key: str
    channels: int
    writers: list[str] = field(default_factory=list)
    places: list[tuple[int, int, int]] = field(default_factory=list)
    kind: str = "free"
    reason: str = ""
    blocks: int = 1
    grouping: str = ""

    @property
    def resizable(self) -> bool:
        return self.kind == "free"


_PRIORITY = {"input": 0, "output": 1, "source": 2, "blocked": 3}


class _Groups:
    """Union-find over group ids, with each feature map's layout as a list of (group id, multiplier)."""

    def __init__(self, graph: ChannelGraph) -> None:
        self.g = graph
        self.parent: list[int] = []
        self.size: list[int] = []
        self.writer: dict[int, tuple[int, str]] = {}  # id -> (op index, key candidate)
        self.writers: dict[int, list[str]] = {}
        self.reasons: dict[int, list[tuple[str, str]]] = {}
        self.layout: dict[int, list[tuple[int, int]]] = {}
        self.grouped: dict[int, list[tuple[str, int, str]]] = {}  # id -> (conv, groups, "read"/"written") splitting it

    def new(self, channels: int, op_index: int, name: str, module: str | None = None) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.size.append(channels)
        self.writer[gid] = (op_index, name)
        self.writers[gid] = [module] if module else []
        self.reasons[gid] = []
        self.grouped[gid] = []
        return gid

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if self.writer[b][0] < self.writer[a][0]:
            a, b = b, a  # the earliest writer names the group
        self.parent[b] = a
        self.writers[a] += [w for w in self.writers[b] if w not in self.writers[a]]
        self.reasons[a] += self.reasons[b]
        self.grouped[a] += self.grouped[b]

    def mark(self, layout: list[tuple[int, int]], kind: str, reason: str) -> None:
        for gid, _ in layout:
            self.reasons[self.find(gid)].append((kind, reason))

    def tie(self, a: list[tuple[int, int]], b: list[tuple[int, int]], what: str) -> None:
        """The channels of two feature maps must stay equal (a residual add, two calls of one module)."""
        same = len(a) == len(b) and all(ka == kb and self.size[self.find(ga)] == self.size[self.find(gb)]
                                        for (ga, ka), (gb, kb) in zip(a, b))
        if same:
            for (ga, _), (gb, _) in zip(a, b):
                self.union(ga, gb)
        else:
            self.mark(a + b, "blocked", f"{what} ties it to channels laid out differently (e.g. a concatenation "
                                        f"added to a single layer's output)")


def weight_groups(module: nn.Module, in_channels: int) -> int:
    """The ``groups`` of a convolution, from its weight's shape (a functional F.conv2d may not store it)."""
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() >= 3 and w.shape[1] > 0:
        return max(1, in_channels // w.shape[1])
    return getattr(module, "groups", 1)


def _analyse(graph: ChannelGraph) -> _Groups:
    u = _Groups(graph)
    nodes = graph.nodes
    seen_out: dict[str, int] = {}  # module -> its output group (a module called twice writes one group)
    seen_in: dict[str, list[tuple[int, int]]] = {}  # module -> layout of its first call's input
    for nid in graph.inputs:
        gid = u.new(nodes[nid].channels, -1, "input")
        u.layout[nid] = [(gid, 1)]
        u.mark(u.layout[nid], "input", "it holds the network's input channels")
    for op in graph.ops:
        out = nodes[op.output]
        ins = [u.layout[i] for i in op.inputs]
        where = f"'{op.name}' in {op.context or 'the model'}"
        if op.kind in ("conv", "linear", "norm") and op.module in seen_in:
            u.tie(seen_in[op.module], ins[0], f"module '{op.module}', called more than once,")
        elif op.kind in ("conv", "linear", "norm"):
            seen_in[op.module] = ins[0]
        if op.kind in ("conv", "linear"):
            module = graph.modules[op.module]
            c_in = nodes[op.inputs[0]].channels
            groups = weight_groups(module, c_in) if op.kind == "conv" else 1
            if op.kind == "conv" and groups > 1 and groups == c_in:  # depthwise: output j reads input j // m
                m = out.channels // c_in
                u.layout[op.output] = [(gid, k * m) for gid, k in ins[0]]
                continue
            if op.module not in seen_out:
                seen_out[op.module] = u.new(out.channels, op.index, op.module, op.module)
            u.layout[op.output] = [(seen_out[op.module], 1)]
            if groups > 1:  # output block j reads input block j: both sides are cut alike in every block
                u.grouped[u.find(seen_out[op.module])].append((op.module, groups, "written"))
                if len(ins[0]) == 1 and ins[0][0][1] == 1:
                    u.grouped[u.find(ins[0][0][0])].append((op.module, groups, "read"))
                else:
                    u.mark(ins[0], "blocked", f"it is read by grouped convolution '{op.module}' (groups={groups}) "
                                              f"together with other channels (a concatenation or a depthwise "
                                              f"multiplier), so its groups cannot be cut alike")
            elif op.kind == "linear" and len(nodes[op.inputs[0]].shape) != 2:
                why = f"linear layer '{op.module}' applied to a {len(nodes[op.inputs[0]].shape)}-d tensor (its " \
                      f"features are not dim 1)"
                u.mark(ins[0], "blocked", f"it is read by {why}")
                u.mark(u.layout[op.output], "source", f"it is written by {why}")
        elif op.kind == "norm":
            u.layout[op.output] = ins[0]
            module = graph.modules[op.module]
            shape = getattr(module, "normalized_shape", None)
            if shape is not None and len(nodes[op.inputs[0]].shape) - len(shape) <= 1:
                u.mark(ins[0], "blocked", f"layer norm '{op.module}' normalizes over its channels, so they cannot "
                                          f"change without changing the other channels' outputs")
        elif op.kind == "elementwise":
            full = [lay for i, lay in zip(op.inputs, ins) if nodes[i].channels == out.channels]
            for lay in full[1:]:
                u.tie(full[0], lay, where)
            u.layout[op.output] = full[0]
        elif op.kind == "mix":  # channels stay in place but depend on each other: fine for the output classes
            u.layout[op.output] = ins[0]
            u.mark(ins[0], "blocked", f"it flows into {where}, which normalizes over the channels (accepted "
                                      f"only over the network's output classes)")
        elif op.kind == "cat" and sum(op.info["sizes"]) == sum(nodes[i].channels for i in op.inputs):
            u.layout[op.output] = [seg for lay in ins for seg in lay]
        elif op.kind == "flatten":
            u.layout[op.output] = [(gid, k * op.info["spatial"]) for gid, k in ins[0]]
        else:  # opaque (or a concatenation with untraced chunks): channels cannot be followed through it
            why = op.info.get("why")
            what = f"which {why}; resize cannot follow it" if why else "which resize cannot follow"
            for lay in ins:
                u.mark(lay, "blocked", f"it flows into {where}, {what} (supported: layers, elementwise calls, "
                                       f"concatenation along channels, flatten)")
            u.layout[op.output] = [(u.new(out.channels, op.index, f"{op.context or 'model'}:{op.name}"), 1)]
            u.mark(u.layout[op.output], "source", f"it is written by {where}, which cannot be resized")
    for nid in graph.outputs:
        u.mark(u.layout[nid], "output", "it holds the network's output channels")
    return u


def _blocks(cuts: list[tuple[str, int, str]]) -> tuple[int, str, str]:
    """(blocks, grouping, clash) of a group split by the grouped convolutions ``cuts`` (conv, groups, verb).

    Cutting every one of ``b`` blocks alike also cuts every coarser split alike when its count divides ``b``, so
    nested splits take the finest; splits that do not nest (groups=2 and groups=3 on 12 channels) leave no plan but
    keeping everything or nothing: ``clash`` says so (empty when they nest)."""
    if not cuts:
        return 1, "", ""
    module, b, verb = max(cuts, key=lambda c: c[1])
    grouping = f"it is {verb} by grouped convolution '{module}' (groups={b})"
    other = next((c for c in cuts if b % c[1]), None)
    if other is None:
        return b, grouping, ""
    return 1, "", (f"grouped convolutions '{module}' (groups={b}) and '{other[0]}' (groups={other[1]}) split it "
                   f"into groups that do not nest, so no per-group cut fits both")


def channel_groups(graph: ChannelGraph) -> dict[str, Group]:
    """Every set of channels that must be resized together, keyed by a stable name (see the module docstring)."""
    u = _analyse(graph)
    roots = sorted({u.find(g) for g in range(len(u.parent))}, key=lambda r: u.writer[r][0])
    groups: dict[str, Group] = {}
    key_of: dict[int, str] = {}
    for r in roots:
        blocks, grouping, clash = _blocks(u.grouped[r])
        reasons = sorted(u.reasons[r] + ([("blocked", clash)] if clash else []), key=lambda kr: _PRIORITY[kr[0]])
        kind, reason = reasons[0] if reasons else ("free", "")
        base = kind if kind in ("input", "output") else u.writer[r][1]
        key, n = base, 1
        while key in groups:  # e.g. several outputs
            n += 1
            key = f"{base}#{n}"
        groups[key] = Group(key, u.size[r], list(u.writers[r]), [], kind, reason, blocks, grouping)
        key_of[r] = key
    for nid, lay in sorted(u.layout.items()):
        offset = 0
        for gid, k in lay:
            g = groups[key_of[u.find(gid)]]
            g.places.append((nid, offset, k))
            offset += g.channels * k
    return groups


def check_traceable(model: nn.Module, example: torch.Tensor, *, grouped: bool = False) -> ChannelGraph:
    """Trace ``model`` and run every refusal of channel surgery now (e.g. when a run starts), not after training.

    Refuses, with a one-line :class:`~resprout.errors.ConfigError` naming the module or call: a layer whose weight
    is computed in the forward pass (weight norm, spectral norm, any parametrization, a functional conv/linear with
    a computed weight); a concatenation along channels with a constant chunk that blocks a group surgery could
    otherwise cut; any channel group that a consumer cannot follow (it flows into an opaque call such as a cumulative
    sum, a reduction or a channel shuffle, or into a softmax or normalization over channels that are not the
    network's output) and that is not fixed anyway (the image, the classes, channels written by an opaque call).

    Channels that a grouped convolution splits into groups (:attr:`Group.blocks`) can
    only be cut alike in every group. ``grouped=True`` accepts them (the caller's plans do that: Knowledge
    Evolution's per-group prefix); by default they are refused, naming the convolution. Returns the graph.
    """
    graph = trace(model, example, strict=True)
    groups = channel_groups(graph)
    where: dict[int, list] = {}
    for g in groups.values():
        for nid, _offset, _k in g.places:
            where.setdefault(nid, []).append(g)
    for op in graph.ops:
        if op.kind == "cat" and any(op.info.get("constant", ())):
            blocked = [g for nid in op.inputs for g in where.get(nid, ()) if g.kind == "blocked"]
            if blocked:
                n = sum(s for s, c in zip(op.info["sizes"], op.info["constant"]) if c)
                raise ConfigError(f"'{op.name}' in {op.context or 'the model'} concatenates {n} channels that do "
                                  f"not come from the input (a constant, buffer or parameter) to channel group "
                                  f"'{blocked[0].key}'; channel surgery cannot cut a group laid out next to a "
                                  f"constant chunk")
    for key, g in groups.items():
        if g.kind == "blocked":
            raise ConfigError(f"channel surgery cannot cut channel group '{key}': {g.reason}")
        if g.resizable and g.blocks > 1 and not grouped:
            raise ConfigError(f"channel surgery cannot cut channel group '{key}' channel by channel: "
                              f"{g.grouping}, so every group must keep the same channels; only a plan that cuts "
                              f"all {g.blocks} groups alike can (Knowledge Evolution's KELS)")
    return graph

def check_plan(groups: dict[str, Group], plan: GroupPlan) -> GroupPlan:
    """``plan`` checked against ``groups`` (one-line ConfigErrors), without the entries that change nothing."""
    if not isinstance(plan, dict):
        raise ConfigError(f"a channel plan must be a dict of group -> list of old channel indices; got "
                          f"{type(plan).__name__}")
    out: GroupPlan = {}
    for key, index in plan.items():
        if key not in groups:
            known = ", ".join(sorted(groups)[:12]) + (", ..." if len(groups) > 12 else "")
            raise ConfigError(f"unknown channel group {key!r} in the plan; groups: {known}")
        g = groups[key]
        if not isinstance(index, (list, tuple)) or not all(isinstance(j, int) and not isinstance(j, bool)
                                                           for j in index):
            raise ConfigError(f"plan of channel group '{key}' must be a list of integers (old channel or -1)")
        if not index:
            raise ConfigError(f"plan of channel group '{key}' leaves it without channels")
        bad = [j for j in index if not -1 <= j < g.channels]
        if bad:
            raise ConfigError(f"plan of channel group '{key}' has index {bad[0]}, out of range (the group has "
                              f"{g.channels} channels; -1 means a new channel)")
        kept = [j for j in index if j >= 0]
        if len(set(kept)) != len(kept):
            dup = next(j for j in kept if kept.count(j) > 1)
            raise ConfigError(f"plan of channel group '{key}' uses old channel {dup} more than once")
        if list(index) == list(range(g.channels)):
            continue
        if not g.resizable:
            raise ConfigError(f"cannot resize channel group '{key}': {g.reason}")
        if g.blocks > 1 and block_plan(g, index) is None:
            size = g.channels // g.blocks
            raise ConfigError(f"plan of channel group '{key}' must cut its {g.blocks} groups of {size} channels "
                              f"alike ({g.grouping}): the same channels of every group, group after group")
        out[key] = list(index)
    return out


def block_plan(g: Group, index: list[int]) -> list[int] | None:
    """The plan of one block (indices within the block, -1 for new) if ``index`` cuts every one of the
    ``g.blocks`` blocks of ``g`` alike, block after block; None otherwise."""
    size = g.channels // g.blocks
    if len(index) % g.blocks:
        return None
    n = len(index) // g.blocks
    first = list(index[:n])
    if any(j >= size for j in first):
        return None
    for b in range(1, g.blocks):
        if list(index[b * n:(b + 1) * n]) != [j + b * size if j >= 0 else -1 for j in first]:
            return None
    return first


def node_maps(groups: dict[str, Group], plan: GroupPlan) -> NodePlan:
    """Every feature map's channels under ``plan``: for each new channel, the old channel it is, or -1."""
    segments: dict[int, list[tuple[int, int, Group]]] = {}
    for g in groups.values():
        for nid, offset, k in g.places:
            segments.setdefault(nid, []).append((offset, k, g))
    maps: NodePlan = {}
    for nid, segs in segments.items():
        index: list[int] = []
        for offset, k, g in sorted(segs, key=lambda s: s[0]):
            for j in plan.get(g.key, range(g.channels)):
                index += [offset + j * k + r if j >= 0 else -1 for r in range(k)]
        maps[nid] = index
    return maps


@dataclass
class LayerPlan:
    """What one conv/linear/norm module keeps: output channels and (for conv/linear) input channels (old indices)."""

    module: str
    kind: str
    keep_out: list[int]
    keep_in: list[int]


def layer_plans(graph: ChannelGraph, plan: NodePlan) -> dict[str, LayerPlan]:
    """Per module: kept output and input channels. A module called twice must keep the same channels each time."""
    layers: dict[str, LayerPlan] = {}
    for op in graph.layer_ops():
        keep_out = plan[op.output]
        keep_in = plan[op.inputs[0]]
        lp = LayerPlan(op.module, op.kind, keep_out, keep_in)
        prev = layers.get(op.module)
        if prev is not None and (prev.keep_out, prev.keep_in) != (keep_out, keep_in):
            raise ConfigError(f"module '{op.module}' is called more than once with different channel plans")
        layers[op.module] = lp
    return layers


def layer_masks(model: nn.Module, layers: dict[str, LayerPlan]) -> dict[str, torch.Tensor]:
    """Binary masks (1 = kept) of every conv and linear weight in the plan, keyed by parameter name."""
    masks = {}
    for path, lp in layers.items():
        if lp.kind not in ("conv", "linear"):
            continue
        module = model.get_submodule(path)
        w = module.weight
        mask = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
        rows = torch.tensor(lp.keep_out, dtype=torch.long, device=w.device)
        # column t of a (grouped) conv's weight reads input t of its row's group: the kept inputs within a group
        # (all of them for an ungrouped layer, the only one for a depthwise conv; a plan cuts every group alike)
        within = sorted({j % w.shape[1] for j in lp.keep_in if j >= 0})
        cols = torch.tensor(within, dtype=torch.long, device=w.device)
        mask[rows[:, None], cols[None, :]] = True
        masks[f"{path}.weight" if path else "weight"] = mask
    return masks


def zero_outside(model: nn.Module, layers: dict[str, LayerPlan], masks: dict[str, torch.Tensor]) -> None:
    """Zero everything the plan drops, in place: masked weights, and the biases and BN scale/shift of dropped
    channels. The dense network then computes exactly what the cut-down network computes (on the kept channels)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in masks:
                p.mul_(masks[name].to(p.dtype))
        for path, lp in layers.items():
            module = model.get_submodule(path)
            n = getattr(module, "out_channels", None) or getattr(module, "out_features", None) or \
                getattr(module, "num_features", None)
            drop = sorted(set(range(n)) - set(lp.keep_out))
            if not drop:
                continue
            idx = torch.tensor(drop, dtype=torch.long)
            for attr in ("bias",) + (("weight",) if lp.kind == "norm" else ()):
                t = getattr(module, attr, None)
                if t is not None:
                    t[idx.to(t.device)] = 0


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def example_input(input_shape: tuple[int, ...], batch: int = 2, device: str | torch.device = "cpu") -> torch.Tensor:
    """A fixed pseudo-random batch for tracing (batch 2: batch-norm in training mode needs more than one value)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn((batch, *input_shape), generator=g).to(device)
