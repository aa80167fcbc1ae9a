"""The channel graph of a model: which layers read and write which feature maps, traced from one real forward pass.

Surgery that removes or keeps channels (Knowledge Evolution's slim fit hypothesis, Neural Rejuvenation's dead
neurons) must know how channels flow: a residual add ties the channels of its two inputs together, a concatenation
lays its inputs side by side, a flatten turns one channel into many features, the first convolution reads the image
itself and the classifier writes the classes. Guessing this from module names or from "has 3 input channels" breaks
on the first unusual model, so the graph is traced: the model runs once on an example input under a
``TorchFunctionMode`` that records every torch call, which tensors it read and which it produced.

Layers are recognized by the parameters they use (``F.conv2d`` called with the weight of module ``layer1.0.conv1``
is that module), so any ``nn.Module`` works, whatever its forward does in Python. Every other call is classified by
what it does to the channel dimension (dim 1):

* ``elementwise``: keeps dim 1 (activations, adds, products, pooling, dropout, spatial reductions); its inputs with
  the full channel count are tied together, inputs broadcast along channels (size 1) are not;
* ``cat``: concatenation along dim 1, chunk sizes recorded;
* ``flatten``: (N, C, H, W) -> (N, C*H*W), channel c becomes features ``c*H*W ... (c+1)*H*W - 1``;
* ``opaque``: anything else that produces a tensor from a traced one (channel slicing, permutes, reshapes that mix
  channels). Surgery refuses to cut channels that flow into an opaque call, with the call's name and module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from resprout.errors import ConfigError

_CONV_FUNCS = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}
_LINEAR_FUNCS = {F.linear, torch._C._nn.linear}
_NORM_FUNCS = {F.batch_norm, torch.batch_norm, F.group_norm, torch.group_norm, F.layer_norm, torch.layer_norm,
               F.instance_norm, torch.instance_norm}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_RESHAPE_NAMES = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
# Calls that may keep the size of dim 1 yet move or pick channels: never treated as elementwise.
_CHANNEL_MOVING = {"permute", "transpose", "t", "movedim", "moveaxis", "swapaxes", "swapdims", "roll", "flip",
                   "channel_shuffle", "pixel_shuffle", "pixel_unshuffle", "index_select", "gather", "take",
                   "__getitem__", "narrow", "select", "split", "chunk", "unbind", "tensor_split", "sort", "argsort",
                   "topk", "repeat", "repeat_interleave", "expand", "unfold", "fold", "scatter", "masked_select"}


@dataclass
class Node:
    """A feature tensor seen during the trace."""

    id: int
    shape: tuple[int, ...]
    producer: int | None  # index of the op that made it (None for the model input)

    @property
    def channels(self) -> int:
        return self.shape[1] if len(self.shape) > 1 else 1


@dataclass
class Op:
    """One recorded call. ``module`` is the layer's path for conv/linear/norm calls."""

    index: int
    kind: str  # input | conv | linear | norm | elementwise | cat | flatten | opaque
    name: str
    inputs: list[int]
    output: int
    module: str | None = None
    context: str = ""  # the module whose forward made the call (for messages)
    info: dict = field(default_factory=dict)


@dataclass
class ChannelGraph:
    nodes: dict[int, Node]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]
    modules: dict[str, nn.Module]

    def layer_ops(self, kinds: tuple[str, ...] = ("conv", "linear", "norm")) -> list[Op]:
        return [op for op in self.ops if op.kind in kinds]

    def consumers(self) -> dict[int, list[Op]]:
        out: dict[int, list[Op]] = {}
        for op in self.ops:
            for i in op.inputs:
                out.setdefault(i, []).append(op)
        return out


def _func_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":  # a property such as Tensor.shape
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", "property")
    return name


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


class _Recorder(TorchFunctionMode):
    def __init__(self, graph: ChannelGraph, owners: dict[int, str], context: list[str]) -> None:
        super().__init__()
        self.g = graph
        self.owners = owners  # id(parameter or buffer) -> module path
        self.context = context
        self.node_of: dict[int, int] = {}  # id(tensor) -> node id
        self.keep_alive: list[torch.Tensor] = []

    def add_node(self, t: torch.Tensor, producer: int | None) -> int:
        nid = len(self.g.nodes)
        self.g.nodes[nid] = Node(nid, tuple(t.shape), producer)
        self.node_of[id(t)] = nid
        self.keep_alive.append(t)
        return nid

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [t for t in _tensors((args, kwargs)) if id(t) in self.node_of]
        outs = [t for t in _tensors(out) if isinstance(t, torch.Tensor)]
        if not ins or not outs:
            return out
        name = _func_name(func)
        params = [t for t in _tensors((args, kwargs)) if id(t) in self.owners]
        module = self.owners[id(params[0])] if params else None
        kind, info = self._classify(func, name, args, kwargs, ins, outs, module)
        for t in outs:
            if not t.is_floating_point() and not t.is_complex():
                continue  # indices, masks: not features
            op = Op(len(self.g.ops), kind, name, [self.node_of[id(i)] for i in ins], -1, module,
                    self.context[-1] if self.context else "", info)
            op.output = self.add_node(t, op.index)
            self.g.ops.append(op)
        return out

    def _classify(self, func, name, args, kwargs, ins, outs, module) -> tuple[str, dict]:
        x, y = ins[0], outs[0]
        if func in _CONV_FUNCS and module is not None:
            return "conv", {}
        if func in _LINEAR_FUNCS and module is not None:
            return "linear", {}
        if func in _NORM_FUNCS and module is not None:
            return "norm", {}
        if func in _CAT_FUNCS:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if x.dim() > 1 and dim % x.dim() == 1:
                return "cat", {"sizes": [t.shape[1] for t in _tensors(args[0])]}
            return "opaque", {}
        if len(outs) != 1 or x.dim() < 2:
            return "opaque", {}
        if name in _RESHAPE_NAMES:
            if x.dim() == 4 and y.dim() == 2 and y.shape[0] == x.shape[0] and y.shape[1] == x[0].numel():
                return "flatten", {"spatial": x.shape[2] * x.shape[3]}
            if y.dim() >= 2 and y.shape[:2] == x.shape[:2]:
                return "elementwise", {}
            return "opaque", {}
        if name in _CHANNEL_MOVING:
            return "opaque", {}
        same_batch = y.dim() >= 2 and y.shape[0] == x.shape[0]
        if same_batch and all(t.dim() >= 2 and t.shape[1] in (y.shape[1], 1) for t in ins) and \
                any(t.shape[1] == y.shape[1] for t in ins):
            return "elementwise", {}
        return "opaque", {}


@torch.no_grad()
def trace(model: nn.Module, example: torch.Tensor) -> ChannelGraph:
    """The channel graph of ``model`` on ``example`` (a batch), in eval mode; the model's modes are restored."""
    owners: dict[int, str] = {}
    modules = dict(model.named_modules())
    for path, m in modules.items():
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            owners.setdefault(id(t), path)
    graph = ChannelGraph({}, [], [], [], modules)
    context: list[str] = []
    names = {id(m): (p or type(m).__name__) for p, m in modules.items()}

    def pre(mod, _inp):
        context.append(names.get(id(mod), type(mod).__name__))

    def post(mod, _inp, _out):
        if context:
            context.pop()

    handles = [m.register_forward_pre_hook(pre) for m in modules.values()]
    handles += [m.register_forward_hook(post) for m in modules.values()]
    modes = {id(m): m.training for m in model.modules()}
    model.eval()
    recorder = _Recorder(graph, owners, context)
    try:
        example = example.clone()
        graph.inputs.append(recorder.add_node(example, None))
        with recorder:
            out = model(example)
    except Exception as e:  # the user's model failed on the example input: say so in one line
        raise ConfigError(f"tracing {type(model).__name__} failed on an input of shape {tuple(example.shape)}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    finally:
        for h in handles:
            h.remove()
        for m in model.modules():
            m.train(modes[id(m)])
    graph.outputs = [recorder.node_of[id(t)] for t in _tensors(out) if id(t) in recorder.node_of]
    if not graph.outputs:
        raise ConfigError(f"tracing {type(model).__name__}: its output does not depend on its input")
    return graph
