"""Channel plans on a traced model: which channels of every feature map a sub-network keeps, and the real, smaller
network that keeps only those.

A *plan* maps every traced feature map (a :class:`~resprout.surgery.graph.Node`) to the sorted list of its channels
that are kept. :func:`prefix_plan` builds the Knowledge Evolution plan (Taha et al. CVPR 2021, Sec. 3.2, Fig. 3):
every convolution and linear layer keeps its first ``ceil(s_r * C_out)`` outputs; the network input keeps all its
channels (so the first convolution reads the whole image, found from the graph); the network output keeps all of
them (the classifier keeps every class); elementwise calls keep what their inputs keep (and a residual add demands
that both inputs keep the same channels); a concatenation keeps, within each chunk, what that chunk's producer kept
(the first ``ceil(s_r * c_j)`` of each chunk, paper App. B); a flatten keeps every feature of a kept channel.
Depthwise convolutions follow their input; other grouped convolutions are refused, because a prefix of a grouped
convolution's input mixes its groups.

:func:`layer_masks` turns a plan into the binary mask of every conv/linear weight (rows: kept outputs; columns:
kept inputs), and :func:`extract` builds the sub-network as a real ``nn.Module`` with fewer channels (not zeros).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from resprout.errors import ConfigError
from resprout.surgery.graph import ChannelGraph, Op, trace

Plan = dict[int, list[int]]


@dataclass
class LayerPlan:
    """What one conv/linear/norm module keeps: output channels and (for conv/linear) input channels."""

    module: str
    kind: str
    keep_out: list[int]
    keep_in: list[int]


def _conv_groups(module: nn.Module) -> int:
    return getattr(module, "groups", 1)


def _output_tied(graph: ChannelGraph) -> set[int]:
    """Feature maps whose channels are the network's output channels (reached by channel-keeping calls)."""
    tied = set(graph.outputs)
    for op in reversed(graph.ops):
        if op.output in tied and op.kind in ("elementwise", "norm", "flatten") and op.info.get("spatial", 1) == 1:
            tied.update(i for i in op.inputs if graph.nodes[i].channels == graph.nodes[op.output].channels)
    return tied


def prefix_plan(graph: ChannelGraph, split_rate: float) -> Plan:
    """Knowledge Evolution's KELS plan: the first ``ceil(split_rate * C)`` channels of every layer's output."""
    if not 0 < split_rate <= 1:
        raise ConfigError(f"bad split rate {split_rate} (must be in (0, 1])")
    tied = _output_tied(graph)
    plan: Plan = {i: list(range(graph.nodes[i].channels)) for i in graph.inputs}
    for op in graph.ops:
        out = graph.nodes[op.output]
        ins = [plan[i] for i in op.inputs]
        if op.kind in ("conv", "linear"):
            module = graph.modules[op.module]
            if op.output in tied:
                keep = list(range(out.channels))
            elif op.kind == "conv" and _conv_groups(module) > 1:
                keep = _grouped_keep(op, module, ins[0], graph.nodes[op.inputs[0]].channels)
            else:
                keep = list(range(math.ceil(split_rate * out.channels)))
        elif op.kind == "norm":
            keep = ins[0]
        elif op.kind == "elementwise":
            full = [(i, k) for i, k in zip(op.inputs, ins) if graph.nodes[i].channels == out.channels]
            keep = full[0][1]
            for _, k in full[1:]:
                if k != keep:
                    raise ConfigError(f"'{op.name}' in {op.context or 'the model'} combines feature maps that keep "
                                      f"different channels ({_describe(keep)} vs {_describe(k)}); the channel plan "
                                      f"cannot cut them consistently")
        elif op.kind == "cat":
            keep, offset = [], 0
            for i, k in zip(op.inputs, ins):
                keep += [offset + c for c in k]
                offset += graph.nodes[i].channels
        elif op.kind == "flatten":
            hw = op.info["spatial"]
            keep = [c * hw + s for c in ins[0] for s in range(hw)]
        else:  # opaque: fine while nothing was cut before it
            for i, k in zip(op.inputs, ins):
                if len(k) != graph.nodes[i].channels:
                    raise ConfigError(f"cannot follow channels through '{op.name}' in {op.context or 'the model'}: "
                                      f"the channel plan would cut its input; supported are layers, elementwise "
                                      f"calls, concatenation along channels and flatten")
            keep = list(range(out.channels))
        plan[op.output] = keep
    return plan


def _grouped_keep(op: Op, module: nn.Module, keep_in: list[int], c_in: int) -> list[int]:
    groups = _conv_groups(module)
    c_out = module.out_channels
    if groups == c_in:  # depthwise (with channel multiplier m): output channel j reads input j // m
        m = c_out // c_in
        return [c * m + r for c in keep_in for r in range(m)]
    if len(keep_in) == c_in:
        return list(range(c_out))
    raise ConfigError(f"grouped convolution '{op.module}' (groups={groups}) reads a feature map whose channels are "
                      f"cut as a prefix, which mixes its groups; only depthwise and ungrouped convolutions are "
                      f"supported")


def _describe(keep: list[int]) -> str:
    if keep == list(range(len(keep))):
        return f"the first {len(keep)}"
    return f"{len(keep)} channels"


def layer_plans(graph: ChannelGraph, plan: Plan) -> dict[str, LayerPlan]:
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
        groups = _conv_groups(module) if lp.kind == "conv" else 1
        if groups > 1:  # depthwise: each output reads its own single input slice
            mask[rows] = True
        else:
            cols = torch.tensor(lp.keep_in, dtype=torch.long, device=w.device)
            mask[rows[:, None], cols[None, :]] = True
        masks[f"{path}.weight" if path else "weight"] = mask
    return masks


def _index(t: torch.Tensor | None, dim: int, keep: list[int]) -> torch.Tensor | None:
    if t is None:
        return None
    return t.index_select(dim, torch.tensor(keep, dtype=torch.long, device=t.device)).clone()


def _slice_module(module: nn.Module, lp: LayerPlan) -> None:
    """Cut one module down to the plan, in place (new parameters; attributes updated)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        groups = module.groups
        w = _index(module.weight.data, 0, lp.keep_out)
        if groups == 1:
            w = _index(w, 1, lp.keep_in)
            module.in_channels = len(lp.keep_in)
        else:  # depthwise: groups follow the kept inputs
            module.in_channels = len(lp.keep_in)
            module.groups = len(lp.keep_in)
        module.out_channels = len(lp.keep_out)
        module.weight = nn.Parameter(w, requires_grad=module.weight.requires_grad)
        if module.bias is not None:
            module.bias = nn.Parameter(_index(module.bias.data, 0, lp.keep_out))
    elif isinstance(module, nn.Linear):
        w = _index(_index(module.weight.data, 0, lp.keep_out), 1, lp.keep_in)
        module.in_features, module.out_features = len(lp.keep_in), len(lp.keep_out)
        module.weight = nn.Parameter(w, requires_grad=module.weight.requires_grad)
        if module.bias is not None:
            module.bias = nn.Parameter(_index(module.bias.data, 0, lp.keep_out))
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        keep = lp.keep_out
        module.num_features = len(keep)
        if module.weight is not None:
            module.weight = nn.Parameter(_index(module.weight.data, 0, keep))
            module.bias = nn.Parameter(_index(module.bias.data, 0, keep))
        if module.running_mean is not None:
            module.running_mean = _index(module.running_mean, 0, keep)
            module.running_var = _index(module.running_var, 0, keep)
    elif len(lp.keep_out) != _channel_count(module, lp):
        raise ConfigError(f"cannot cut channels of '{lp.module}' ({type(module).__name__}): only Conv, Linear and "
                          f"BatchNorm layers can be sliced")


def _channel_count(module: nn.Module, lp: LayerPlan) -> int:
    return getattr(module, "num_channels", None) or getattr(module, "num_features", None) or len(lp.keep_out)


def extract(model: nn.Module, graph: ChannelGraph, plan: Plan, example: torch.Tensor | None = None) -> nn.Module:
    """A deep copy of ``model`` cut down to ``plan``: a real network with fewer channels.

    When ``example`` is given the result is run on it, so a forward that hard-codes a channel count fails here, with
    a clear message, rather than later.
    """
    layers = layer_plans(graph, plan)
    slim = copy.deepcopy(model)
    for path, lp in layers.items():
        _slice_module(slim.get_submodule(path), lp)
    if example is not None:
        try:
            with torch.no_grad():
                was = slim.training
                slim.eval()
                slim(example)
                slim.train(was)
        except Exception as e:
            raise ConfigError(f"the cut-down {type(model).__name__} does not run ({str(e).splitlines()[0]}); its "
                              f"forward probably depends on a fixed channel count") from None
    return slim


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


def kels_plan(model: nn.Module, input_shape: tuple[int, ...], split_rate: float
              ) -> tuple[ChannelGraph, Plan, dict[str, LayerPlan]]:
    """Trace ``model`` and build its KELS plan: (graph, plan per feature map, plan per layer)."""
    graph = trace(model, example_input(input_shape, device=model_device(model)))
    plan = prefix_plan(graph, split_rate)
    return graph, plan, layer_plans(graph, plan)
