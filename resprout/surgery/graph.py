"""The channel graph of a model: which layers read and write which feature maps, traced from one real forward pass.

Surgery that removes or keeps channels (Knowledge Evolution's slim fit hypothesis, Neural Rejuvenation's dead
neurons) must know how channels flow: a residual add ties the channels of its two inputs together, a concatenation
lays its inputs side by side, a flatten turns one channel into many features, the first convolution reads the image
itself and the classifier writes the classes. Guessing this from module names or from "has 3 input channels" breaks
on the first unusual model, so the graph is traced: the model runs once on an example input under a
``TorchFunctionMode`` that records every torch call, which tensors it read and which it produced.

Layers are recognized by the parameters they use (``F.conv2d`` called with the weight of module ``layer1.0.conv1``
is that module), so any ``nn.Module`` works, whatever its forward does in Python. Every other call is classified by
what it does to the channel dimension (dim 1). The tracer refuses when in doubt: a call is elementwise only if it is
*known* to treat every channel on its own; anything else is opaque.

* ``elementwise``: an allowlisted call (:data:`ELEMENTWISE`, or a call of :data:`SPATIAL_DIM_CALLS` whose ``dim``
  excludes dims 0 and 1) that keeps dim 1: activations, arithmetic (``add``, ``mul``, their in-place and dunder
  forms), dropout, pooling, interpolation, spatial padding, spatial reductions (``mean((2, 3))``), dtype/device
  copies, spatial indexing (``x[:, :, 1:]``), concatenation along a spatial dim. Its inputs with the full channel
  count are tied together, inputs broadcast along channels (size 1) are not;
* ``cat``: concatenation along dim 1; ``info["sizes"]`` has the channel count of every chunk and
  ``info["constant"]`` says, per chunk, whether it does not come from the input (see below);
* ``flatten``: (N, C, *S) -> (N, C*prod(S)) for any number of spatial dims (Conv1d, Conv2d, Conv3d maps alike),
  channel c becomes features ``c*prod(S) ... (c+1)*prod(S) - 1`` (``info["spatial"]`` is ``prod(S)``);
* ``mix``: a normalization over the channels that keeps every channel in its place (``softmax``, ``log_softmax``,
  ``softmin``, ``normalize`` over dim 1, same shape out as in): channel c of the output is channel c of the input,
  but its value depends on all the others. Surgery cannot cut channels through it, but the classes of a network that
  ends in ``F.log_softmax(x, dim=1)`` (PyTorch's MNIST example) are never cut: :mod:`~resprout.surgery.channels`
  keeps the channels' group through the call, so the call is accepted exactly when its channels are fixed anyway;
* ``opaque``: anything else that produces a tensor from a traced one: channel slicing, permutes, reshapes that mix
  channels, and calls that mix channels: ``cumsum``/``mean``/``sum``/``norm`` over dim 1, ``local_response_norm``,
  ``group_norm``/``layer_norm`` without a module, ``prelu`` with one weight per channel, an elementwise call with a
  per-channel constant or parameter operand (``x * self.gamma`` with ``gamma`` of shape (C, 1, 1)), or any call not
  on the allowlist. Surgery refuses to cut channels that flow into an opaque call, with the call's name and module,
  and for the common cases what the call does to the channels (``info["why"]``: a channel shuffle's reshape, a
  permute to channels-last, a split along the channels, a reduction over them).

**Tensors that do not come from the input** (constants, buffers or parameters used directly in a forward) are not
graph nodes. Concatenated along channels, such a chunk is recorded in the ``cat`` op (``info["sizes"]`` includes it,
``info["constant"]`` marks it) but ``op.inputs`` lists only the traced chunks; channel surgery never cuts a
constant chunk, and as :func:`~resprout.surgery.channels.channel_groups` cannot keep the constant whole while
cutting its neighbours, the traced chunks of such a concatenation are not cut either (their groups are blocked,
the concatenation's output is a fixed group); :func:`~resprout.surgery.channels.check_traceable` refuses, naming
the call, when that would block a channel group that surgery is otherwise free to cut. Used in an elementwise call,
a constant operand broadcast along channels (size 1 or no channel dim) is fine; one with a value per channel makes
the call opaque.

**Weights computed in the forward pass** cannot be followed: ``torch.nn.utils.weight_norm`` (old style, ``weight_g``
/ ``weight_v`` and a pre-hook), ``torch.nn.utils.parametrizations.weight_norm`` / ``spectral_norm``, any
``torch.nn.utils.parametrize`` parametrization, old-style ``spectral_norm``, or a functional conv/linear/norm call
whose weight is not a parameter (or buffer) of a module. :func:`trace` refuses them with a one-line
:class:`~resprout.errors.ConfigError` naming the module (``strict=False`` records such a call as opaque instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

from resprout.errors import ConfigError

__all__ = ["ELEMENTWISE", "SPATIAL_DIM_CALLS", "ChannelGraph", "Node", "Op", "is_tracing", "trace", "trace_tensors"]

_CONV_FUNCS = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}
_LINEAR_FUNCS = {F.linear, torch._C._nn.linear}
_NORM_FUNCS = {F.batch_norm, torch.batch_norm, F.group_norm, torch.group_norm, F.layer_norm, torch.layer_norm,
               F.instance_norm, torch.instance_norm}
# Where each layer call takes its weight: (position, keyword). torch.batch_norm / torch.instance_norm are the aten
# signatures (input, weight, bias, running_mean, ...), the F. versions (input, running_mean, running_var, weight, ...).
_WEIGHT_ARG = {**{f: (1, "weight") for f in _CONV_FUNCS | _LINEAR_FUNCS},
               F.batch_norm: (3, "weight"), F.instance_norm: (3, "weight"), torch.batch_norm: (1, "weight"),
               torch.instance_norm: (1, "weight"), F.group_norm: (2, "weight"), torch.group_norm: (2, "weight"),
               F.layer_norm: (2, "weight"), torch.layer_norm: (2, "weight")}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_RESHAPE_NAMES = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
#: Normalizations over one dim that keep every entry in its place (the ``mix`` kind when that dim is the channels).
_IN_PLACE_NORMALIZATIONS = {"softmax", "log_softmax", "softmin", "_softmax", "_log_softmax", "normalize"}
_MOVES = {"permute", "transpose", "transpose_", "swapaxes", "swapdims", "movedim", "moveaxis"}
# calls that select or split along one dim: the position of their ``dim`` argument
_SPLITS = {"split": 2, "chunk": 2, "tensor_split": 2, "split_with_sizes": 2, "unbind": 1, "narrow": 1,
           "index_select": 1, "gather": 1}


def _with_forms(*names: str) -> set[str]:
    """``add`` -> add, add_, __add__, __radd__, __iadd__."""
    out = set()
    for n in names:
        out |= {n, f"{n}_", f"__{n}__", f"__r{n}__", f"__i{n}__"}
    return out


#: Calls known to treat every channel on its own (by ``__name__``; ``F.relu``, ``torch.relu``, ``Tensor.relu``,
#: ``Tensor.relu_`` alike). They are elementwise when they also keep the batch and channel sizes.
ELEMENTWISE = frozenset(
    # activations
    _with_forms("relu", "relu6", "gelu", "silu", "mish", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh",
                "leaky_relu", "elu", "selu", "celu", "rrelu", "softplus", "softsign", "tanhshrink", "hardshrink",
                "softshrink", "logsigmoid", "log_sigmoid", "threshold", "erf", "exp", "exp2", "expm1", "log", "log2",
                "log10", "log1p", "sqrt", "rsqrt", "square", "abs", "neg", "negative", "sign", "sgn", "reciprocal",
                "sin", "cos", "floor", "ceil", "round", "trunc", "frac", "nan_to_num", "logit", "sinc",
                # arithmetic (binary, broadcasting)
                "add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide", "truediv",
                "floor_divide", "floordiv", "remainder", "mod", "fmod", "pow", "float_power", "rsub",
                "addcmul", "addcdiv", "lerp", "maximum", "minimum", "fmax", "fmin", "clamp", "clip", "clamp_min",
                "clamp_max", "where", "masked_fill", "copysign", "hypot", "atan2", "xlogy", "logaddexp")
    | {"__neg__", "__abs__", "__pos__", "positive", "__div__", "__rdiv__", "__idiv__"}
    # dropout (dropout2d drops whole channels, each on its own)
    | _with_forms("dropout", "alpha_dropout", "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d")
    # pooling, interpolation
    | {f"{kind}_pool{d}d{suffix}" for kind in ("max", "avg", "adaptive_avg", "adaptive_max", "lp")
       for d in (1, 2, 3) for suffix in ("", "_with_indices")}
    | {"fractional_max_pool2d", "fractional_max_pool3d", "fractional_max_pool2d_with_indices",
       "fractional_max_pool3d_with_indices", "max_unpool1d", "max_unpool2d", "max_unpool3d"}
    | {"interpolate", "upsample", "upsample_nearest", "upsample_bilinear"}
    # copies, casts, no-ops
    | {"clone", "contiguous", "to", "detach", "detach_", "float", "double", "half", "bfloat16", "type", "type_as",
       "cpu", "cuda", "requires_grad_", "view_as", "reshape_as", "zeros_like", "ones_like", "full_like",
       "empty_like", "rand_like", "randn_like"}
    # normalization over each channel alone (functional, no module)
    | {"batch_norm", "instance_norm"}
)

#: Calls that mix values along one dim (``dim`` argument: position, keyword, default; ``"legacy"`` is softmax's
#: implicit dim): elementwise when that dim is neither the batch (0) nor the channels (1), opaque otherwise.
SPATIAL_DIM_CALLS = {
    "softmax": (1, "dim", "legacy"), "log_softmax": (1, "dim", "legacy"), "softmin": (1, "dim", "legacy"),
    "_softmax": (1, "dim", "legacy"), "_log_softmax": (1, "dim", "legacy"),
    "normalize": (2, "dim", 1), "glu": (1, "dim", -1),
    "cumsum": (1, "dim", None), "cumprod": (1, "dim", None), "cummax": (1, "dim", None),
    "cummin": (1, "dim", None), "logcumsumexp": (1, "dim", None),
    "cumsum_": (1, "dim", None), "cumprod_": (1, "dim", None),
    "mean": (1, "dim", None), "sum": (1, "dim", None), "nansum": (1, "dim", None), "nanmean": (1, "dim", None),
    "amax": (1, "dim", None), "amin": (1, "dim", None), "aminmax": (1, "dim", None),
    "max": (1, "dim", None), "min": (1, "dim", None), "median": (1, "dim", None), "nanmedian": (1, "dim", None),
    "logsumexp": (1, "dim", None), "std": (1, "dim", None), "var": (1, "dim", None), "prod": (1, "dim", None),
    "norm": (2, "dim", None), "linalg_vector_norm": (2, "dim", None), "vector_norm": (2, "dim", None),
    "flip": (1, "dims", None), "roll": (2, "dims", None),
}
# max/min/... with a tensor as second argument are binary elementwise calls, not reductions
_BINARY_OR_REDUCE = {"max", "min"}
_PARAMETRIZATION_NAMES = {"_WeightNorm": "weight_norm", "_SpectralNorm": "spectral_norm",
                          "_Orthogonal": "orthogonal"}


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
    kind: str  # input | conv | linear | norm | elementwise | cat | flatten | mix | opaque
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
    #: one line per layer whose weight is computed in the forward pass (trace refuses unless strict=False)
    computed_weights: list[str] = field(default_factory=list)

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


def _arg(args: tuple, kwargs: dict, pos: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[pos] if len(args) > pos else default


def _dims(value: Any, ndim: int) -> set[int] | None:
    """``dim`` argument normalized to non-negative ints; None for "all dims" (or something unreadable)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple, torch.Size)) or not value:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        return None
    return {d % ndim for d in value} if ndim else None


def _call_dims(name: str, args: tuple, kwargs: dict, x: torch.Tensor) -> set[int] | None:
    """The dims a call of :data:`SPATIAL_DIM_CALLS` works along, non-negative; None for all (or unreadable)."""
    pos, key, default = SPATIAL_DIM_CALLS[name]
    value = _arg(args, kwargs, pos, key, default)
    if default == "legacy" and value in (None, "legacy"):  # softmax without dim: PyTorch's implicit choice
        value = 0 if x.dim() in (0, 1, 3) else 1
    return _dims(value, x.dim())


def _why_opaque(name: str, args: tuple, kwargs: dict, x: torch.Tensor, y: torch.Tensor | None) -> dict:
    """``{"why": phrase}`` saying what an opaque call does to the channels, for the common cases (else ``{}``);
    the phrase completes "it flows into 'view' in block, which ..."."""
    why = ""
    if name in _MOVES and x.dim() >= 3:
        why = "moves the channels away from dim 1 (e.g. to channels-last for a LayerNorm or Linear over them)"
    elif name in _RESHAPE_NAMES and y is not None and y.dim() > x.dim() and y.shape[0] == x.shape[0] and \
            1 < y.shape[1] < x.shape[1] and x.shape[1] % y.shape[1] == 0:
        why = "splits the channels into several dims (as a channel shuffle does)"
    elif name in _RESHAPE_NAMES:
        why = "reshapes the channels together with other dims"
    elif name in _SPLITS:
        dim = _arg(args, kwargs, _SPLITS[name], "dim", 0)
        if isinstance(dim, int) and x.dim() > 1 and dim % x.dim() == 1:
            why = "splits or selects the channels"
    elif name in SPATIAL_DIM_CALLS or name in ("local_response_norm", "group_norm", "layer_norm"):
        dims = _call_dims(name, args, kwargs, x) if name in SPATIAL_DIM_CALLS else {1}
        if name == "layer_norm":  # over the last len(normalized_shape) dims
            shape = _arg(args, kwargs, 1, "normalized_shape")
            n = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
            dims = set(range(x.dim() - n, x.dim()))
        if dims is None or 1 in dims:
            why = "mixes the channels"
    return {"why": why} if why else {}


def _spatial_index(index: Any) -> bool:
    """``x[index]`` keeps dims 0 and 1 whole and touches only the spatial dims (basic indexing only)."""
    index = index if isinstance(index, tuple) else (index,)
    if Ellipsis in index[:2] or len(index) < 2:
        return False
    full = all(isinstance(i, slice) and i == slice(None) for i in index[:2])
    rest_basic = all(i is None or i is Ellipsis or isinstance(i, (int, slice)) and not isinstance(i, bool)
                     for i in index[2:])
    return full and rest_basic and all(not isinstance(getattr(i, a, None), torch.Tensor) for i in index[2:]
                                       if isinstance(i, slice) for a in ("start", "stop", "step"))


def _spatial_pad(pad: Any, ndim: int) -> bool:
    """``F.pad(x, pad)`` pads only the spatial dims (``pad`` lists (left, right) pairs from the last dim back)."""
    if not isinstance(pad, (list, tuple)):
        return False
    pairs = len(pad) // 2
    return pairs <= ndim - 2 or all(p == 0 for p in pad[2 * (ndim - 2):])


def _parametrization(module: nn.Module | None, attr: str = "weight") -> str | None:
    """How ``module`` computes ``attr`` in its forward, if it does (None otherwise)."""
    if module is None:
        return None
    if torch.nn.utils.parametrize.is_parametrized(module, attr):
        kinds = [_PARAMETRIZATION_NAMES.get(type(p).__name__, type(p).__name__)
                 for p in module.parametrizations[attr]]
        return f"parametrization {', '.join(kinds)}"
    for hook in module._forward_pre_hooks.values():
        kind = type(hook).__name__
        if kind == "WeightNorm" and getattr(hook, "name", None) == attr:
            return "weight_norm, old style: weight_g/weight_v and a forward pre-hook"
        if kind == "SpectralNorm" and getattr(hook, "name", None) == attr:
            return "spectral_norm, old style: weight_orig and a forward pre-hook"
    return None


class _Recorder(TorchFunctionMode):
    def __init__(self, graph: ChannelGraph, owners: dict[int, str], context: list[str],
                 params: set[int] | None = None) -> None:
        super().__init__()
        self.g = graph
        self.owners = owners  # id(parameter or buffer) -> module path
        # ids of the tensors that are parameters or buffers (owners' keys unless given)
        self.params = set(owners) if params is None else params
        self.context = context
        self.node_of: dict[int, int] = {}  # id(tensor) -> node id
        self.keep_alive: list[torch.Tensor] = []  # the tensor of every node, by node id

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
        name = _func_name(func)
        if name == "__setitem__" and ins and args and isinstance(args[0], torch.Tensor):
            outs = [args[0]]  # x[index] = value changes x in place: a new version of x (traced from now on)
        else:
            outs = [t for t in _tensors(out) if isinstance(t, torch.Tensor)]
        if not ins or not outs:
            return out
        params = [t for t in _tensors((args, kwargs)) if id(t) in self.owners]
        module = self.owners[id(params[0])] if params else None
        kind, info = self._classify(func, name, args, kwargs, ins, outs, module)
        if kind == "opaque" and "computed_weight" in info:
            module = info["module"]
        for t in outs:
            if not t.is_floating_point() and not t.is_complex():
                continue  # indices, masks: not features
            op = Op(len(self.g.ops), kind, name, [self.node_of[id(i)] for i in ins], -1, module,
                    self.context[-1] if self.context else "", info)
            op.output = self.add_node(t, op.index)
            self.g.ops.append(op)
        return out

    def _computed_weight(self, func, name, args, kwargs, ins, module) -> dict | None:
        """For a conv/linear/norm call: {"computed_weight": why, "module": path} if its weight is computed in the
        forward pass (not a parameter or buffer of a module), else None."""
        pos, key = _WEIGHT_ARG[func]
        w = _arg(args, kwargs, pos, key)
        if not isinstance(w, torch.Tensor) or id(w) in self.params:
            return None
        path = module if module is not None else (self.context[-1] if self.context else "")
        owner = self.g.modules.get(path)
        if owner is None:  # context names the root module by its class name
            owner = self.g.modules.get("")
        why = _parametrization(owner) or (
            f"{name} with a weight that is computed from the input" if id(w) in self.node_of else
            f"{name} with a weight that is not a parameter of any module")
        line = f"layer '{path or type(owner).__name__}' computes its weight in the forward pass ({why}); " \
               f"channel surgery cannot follow it"
        if line not in self.g.computed_weights:
            self.g.computed_weights.append(line)
        return {"computed_weight": why, "module": path or None}

    def _classify(self, func, name, args, kwargs, ins, outs, module) -> tuple[str, dict]:
        x = ins[0]
        if func in _WEIGHT_ARG:
            computed = self._computed_weight(func, name, args, kwargs, ins, module)
            if computed is not None:
                return "opaque", computed
            if module is not None:
                if func in _CONV_FUNCS:
                    return "conv", {}
                if func in _LINEAR_FUNCS:
                    return "linear", {}
                return "norm", {}
        if func in _CAT_FUNCS:
            chunks = _tensors(args[0]) if args else _tensors(kwargs.get("tensors"))
            dim = _arg(args, kwargs, 1, "dim", 0)
            if x.dim() > 1 and dim % x.dim() == 1:
                return "cat", {"sizes": [t.shape[1] for t in chunks],
                               "constant": [id(t) not in self.node_of for t in chunks]}
            if x.dim() > 2 and dim % x.dim() >= 2 and all(id(t) in self.node_of for t in chunks):
                return self._keeps_channels(ins, outs, "elementwise")  # along a spatial dim
            return "opaque", {}
        fouts = [t for t in outs if t.is_floating_point() or t.is_complex()]
        if len(fouts) != 1 or x.dim() < 2:
            return "opaque", _why_opaque(name, args, kwargs, x, fouts[0] if fouts else None)
        y = fouts[0]
        if name in _RESHAPE_NAMES:
            # one rule for every flatten of (N, C, *spatial) into (N, features): Conv1d stacks, 2-d maps (alexnet,
            # vgg), Conv3d volumes; channel c becomes prod(spatial) consecutive features
            if x.dim() >= 3 and y.dim() == 2 and y.shape[0] == x.shape[0] and y.shape[1] == x[0].numel():
                return "flatten", {"spatial": x[0, 0].numel()}
            if y.dim() >= 2 and y.shape[:2] == x.shape[:2]:
                return "elementwise", {}
            return "opaque", _why_opaque(name, args, kwargs, x, y)
        if not self._allowed(func, name, args, kwargs, x, y):
            if self._over_channels(name, args, kwargs, x, y):
                return "mix", {}
            return "opaque", _why_opaque(name, args, kwargs, x, y)
        if self._per_channel_constant(args, kwargs, y):
            return "opaque", {"constant_operand": True,
                              "why": "combines them with a constant or parameter that has one value per channel"}
        return self._keeps_channels(ins, [y], "elementwise")

    def _allowed(self, func, name, args, kwargs, x, y) -> bool:
        """Whether the call is known to treat every channel on its own (see ELEMENTWISE, SPATIAL_DIM_CALLS)."""
        if name in _BINARY_OR_REDUCE and len(args) > 1 and isinstance(args[1], torch.Tensor):
            return True  # torch.max(a, b)
        if name in SPATIAL_DIM_CALLS:
            dims = _call_dims(name, args, kwargs, x)
            return dims is not None and not dims & {0, 1}
        if name == "__getitem__":
            return _spatial_index(args[1] if len(args) > 1 else None)
        if name == "__setitem__":  # into a traced tensor only (writing into a constant mixes it with the trace)
            return id(args[0]) in self.node_of and _spatial_index(args[1] if len(args) > 1 else None)
        if name == "pad":
            return _spatial_pad(_arg(args, kwargs, 1, "pad"), x.dim())
        if name == "prelu":
            w = _arg(args, kwargs, 1, "weight")
            return isinstance(w, torch.Tensor) and w.numel() == 1
        if name in ("batch_norm", "instance_norm"):  # functional, no module: only without a weight
            return func in (F.batch_norm, F.instance_norm) and _arg(args, kwargs, 3, "weight") is None
        if name == "layer_norm" and func is F.layer_norm:  # over spatial dims only, no weight
            shape = _arg(args, kwargs, 1, "normalized_shape")
            n = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
            return n <= x.dim() - 2 and _arg(args, kwargs, 2, "weight") is None
        return name in ELEMENTWISE

    @staticmethod
    def _over_channels(name, args, kwargs, x, y) -> bool:
        """A softmax/log-softmax/normalize over dim 1 (the channels) that keeps the shape: the ``mix`` kind."""
        if name not in _IN_PLACE_NORMALIZATIONS or y.shape != x.shape:
            return False
        return _call_dims(name, args, kwargs, x) == {1}

    def _per_channel_constant(self, args, kwargs, y: torch.Tensor) -> bool:
        """An operand that is not traced (a constant, buffer or parameter) but has one value per channel of ``y``."""
        if y.dim() < 2 or y.shape[1] <= 1:
            return False
        for t in _tensors((args, kwargs)):
            if id(t) in self.node_of or t.dim() == 0 or t.dtype == torch.bool:
                continue
            axis = t.dim() - (y.dim() - 1)  # dim of t aligned with y's dim 1 under broadcasting
            if 0 <= axis < t.dim() and t.shape[axis] == y.shape[1]:
                return True
        return False

    @staticmethod
    def _keeps_channels(ins, outs, kind: str) -> tuple[str, dict]:
        x, y = ins[0], outs[0]
        same_batch = y.dim() >= 2 and y.shape[0] == x.shape[0]
        if same_batch and all(t.dim() >= 2 and t.shape[1] in (y.shape[1], 1) for t in ins) and \
                any(t.shape[1] == y.shape[1] for t in ins):
            return kind, {}
        return "opaque", {}


def trace(model: nn.Module, example: torch.Tensor, *, strict: bool = True) -> ChannelGraph:
    """The channel graph of ``model`` on ``example`` (a batch), in eval mode; the model's modes are restored.

    Refuses (:class:`~resprout.errors.ConfigError`, one line naming the module) a model with a layer whose weight is
    computed in the forward pass; with ``strict=False`` such a call is recorded as opaque instead and listed in
    ``graph.computed_weights``.
    """
    return trace_tensors(model, example, strict=strict)[0]


def is_tracing() -> bool:
    """Whether :func:`trace` is recording the current forward (a layer may then show the tracer its plain form)."""
    return any(isinstance(mode, _Recorder) for mode in _get_current_function_mode_stack())


@torch.no_grad()
def trace_tensors(model: nn.Module, example: torch.Tensor, *, strict: bool = True
                  ) -> tuple[ChannelGraph, list[torch.Tensor]]:
    """:func:`trace`, and the tensor of every node of the graph (by node id) in that forward: forward hooks the
    caller put on the model's modules see the same tensor objects (so a node can be matched to the module that
    returned it)."""
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
    except Exception as e:  # noqa: BLE001  (the user's model failed on the example input: say so in one line)
        raise ConfigError(f"tracing {type(model).__name__} failed on an input of shape {tuple(example.shape)}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    finally:
        for h in handles:
            h.remove()
        for m in model.modules():
            m.train(modes[id(m)])
    if strict and graph.computed_weights:
        raise ConfigError(graph.computed_weights[0])
    graph.outputs = [recorder.node_of[id(t)] for t in _tensors(out) if id(t) in recorder.node_of]
    if not graph.outputs:
        raise ConfigError(f"tracing {type(model).__name__}: its output does not depend on its input")
    return graph, recorder.keep_alive

