"""Feature taps: the outputs (and on request the inputs) of named modules of any member, captured by forward hooks.

Methods that need intermediate features (feature distillation, attention transfer, CAM-style analyses) declare
*taps* by module path (``"layer3"``, ``"features.12"``; ``""`` is the whole model) and read them after the member's
forward. No model is rewritten: a tap is a forward hook on the module at that path (the idea of torchdistill's
forward-hook manager)::

    taps = FeatureTaps()
    taps.request("student", "layer3")
    taps.request("teacher", "layer3", detach=True)
    taps.attach("student", student)    # the trainer does this when a member is added, replaced or operated on
    taps.attach("teacher", teacher)
    taps.clear()                       # the trainer does this at each step start
    logits = student(x)
    f = taps.output("student", "layer3")   # the tensor layer3 returned in the latest forward of student

Semantics:

* **Zero cost when unused.** A member without requests gets no hook at all; with requests it gets one hook per
  tapped module plus one forward pre-hook on its root module.
* **Latest forward.** The root pre-hook forgets the member's captures when a new forward of that member starts, so
  ``output`` is what the latest forward produced (memory stays bounded during evaluation loops). ``clear()`` forgets
  everything, so a tap read in a step in which its member has not forwarded yet is an error, not a stale tensor.
* **Modules called more than once per forward** (shared blocks, recurrent cells): every call is kept in call order;
  ``output``/``input`` return the last call, ``outputs_all``/``inputs_all`` the list and ``calls`` the count.
* **Gradients.** ``detach=False`` (the default) returns the tensor of the autograd graph: a loss on it backpropagates
  into the layers before it. ``detach=True`` stores ``tensor.detach()`` (same storage, no graph). Captures hold the
  step's autograd graph until ``clear()`` or the member's next forward.
* **Inputs** (``inputs=True``) are the module's positional arguments: the tensor if there is one, else the tuple.
  Outputs that are tuples or dicts are stored as they are (``detach`` applies to the tensors inside). Tensors are not
  copied: a later in-place operation (``ReLU(inplace=True)`` on a tapped tensor) changes the capture as well.
* **Wrappers.** ``attach`` hooks the inner module of ``DistributedDataParallel``/``DataParallel`` (and of
  ``torch.compile``'s wrapper); paths are relative to the inner module. Hooks also fire under ``torch.no_grad``
  (frozen teachers).
* **Surgery and copies.** ``attach`` again after a member's model was replaced (surgery makes new module objects):
  the hooks on the previous model are removed and the new model's modules are hooked. A deep copy or a pickle of a
  tapped model (``copy.deepcopy`` inside a surgery, ``torch.save(model)``) carries inert hooks that capture nothing.

:func:`last_conv_feature` finds the path of "the last convolutional feature map" of a CNN from its traced channel
graph.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from resprout.errors import ConfigError
from resprout.surgery.graph import Node, trace_tensors

__all__ = ["FeatureTaps", "last_conv_feature"]


def _inert_hook(*args: Any, **kwargs: Any) -> None:
    """What a tap hook becomes in a deep copy or a pickle of a tapped model: nothing."""


def _make_inert():
    return _inert_hook


def _detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, tuple):
        return tuple(_detach(o) for o in obj)
    if isinstance(obj, list):
        return [_detach(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


class _Request:
    __slots__ = ("detach", "inputs")

    def __init__(self, inputs: bool, detach: bool) -> None:
        self.inputs = inputs
        self.detach = detach


class _TapHook:
    """The forward hook of one tap. Stale (after a re-attach) or copied hooks do nothing."""

    __slots__ = ("detach", "inputs", "member", "path", "taps", "token")

    def __init__(self, taps: FeatureTaps, member: str, path: str, token: int, inputs: bool, detach: bool) -> None:
        self.taps, self.member, self.path, self.token = taps, member, path, token
        self.inputs, self.detach = inputs, detach

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        taps = self.taps
        if taps._tokens.get(self.member) != self.token:
            return
        key = (self.member, self.path)
        taps._outputs.setdefault(key, []).append(_detach(output) if self.detach else output)
        if self.inputs:
            value = args[0] if len(args) == 1 else tuple(args)
            taps._inputs.setdefault(key, []).append(_detach(value) if self.detach else value)

    def __deepcopy__(self, memo: dict) -> Any:
        return _inert_hook

    def __reduce__(self):
        return (_make_inert, ())


class _ResetHook(_TapHook):
    """The forward pre-hook on a member's root module: a new forward replaces the previous one's captures."""

    __slots__ = ()

    def __call__(self, module: nn.Module, args: tuple) -> None:  # type: ignore[override]
        taps = self.taps
        if taps._tokens.get(self.member) != self.token:
            return
        for store in (taps._outputs, taps._inputs):
            for key in [k for k in store if k[0] == self.member]:
                del store[key]


def _drop_inert_hooks(model: nn.Module) -> None:
    """Remove the inert hooks a deep copy of a tapped model carries, so they do not pile up over many surgeries."""
    for m in model.modules():
        for hooks, extras in ((m._forward_hooks, ("_forward_hooks_with_kwargs", "_forward_hooks_always_called")),
                              (m._forward_pre_hooks, ("_forward_pre_hooks_with_kwargs",))):
            for key in [k for k, h in hooks.items() if h is _inert_hook]:
                del hooks[key]
                for extra in extras:
                    getattr(m, extra, {}).pop(key, None)


def _unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _resolve(model: nn.Module, member: str, path: str) -> nn.Module:
    if path == "":
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        pass
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(path, names, n=3, cutoff=0.5)
    if close:
        hint = "close: " + ", ".join(close)
    else:
        top = [n for n, _ in model.named_children()][:6]
        hint = "top-level modules: " + (", ".join(top) if top else "(none)")
    raise ConfigError(f"feature tap of member {member!r}: no module {path!r} in {type(model).__name__}; {hint}")


class FeatureTaps:
    """Captures outputs (and on request inputs) of named module paths of any member, by forward hooks."""

    def __init__(self) -> None:
        self._requests: dict[str, dict[str, _Request]] = {}
        self._models: dict[str, nn.Module] = {}  # member -> the (inner) module its hooks are on
        self._handles: dict[str, list[RemovableHandle]] = {}
        self._tokens: dict[str, int] = {}  # member -> generation of its live hooks
        self._outputs: dict[tuple[str, str], list[Any]] = {}
        self._inputs: dict[tuple[str, str], list[Any]] = {}

    # -- declaring and hooking ----------------------------------------------------------------------------------------
    def request(self, member: str, path: str, *, inputs: bool = False, detach: bool = False) -> None:
        """Declare a tap on module ``path`` of ``member`` (``""``: the whole model). Asking again is a no-op, except
        that ``inputs=True`` is added; asking again with another ``detach`` is an error. If ``member`` is attached
        already its hooks are renewed at once (an unknown path raises here)."""
        if not isinstance(member, str) or not isinstance(path, str):
            raise ConfigError(f"feature tap: member and path must be strings; got {member!r}, {path!r}")
        reqs = self._requests.get(member, {})
        old = reqs.get(path)
        if old is not None:
            if old.detach != bool(detach):
                raise ConfigError(f"feature tap {member}:{path!r} was requested with detach={old.detach}; "
                                  f"cannot request it again with detach={bool(detach)}")
            if old.inputs or not inputs:
                return
        if member in self._models:
            _resolve(self._models[member], member, path)
        reqs = self._requests.setdefault(member, {})
        if old is not None:
            old.inputs = True
        else:
            reqs[path] = _Request(bool(inputs), bool(detach))
        if member in self._models:
            self.attach(member, self._models[member])

    def attach(self, member: str, model: nn.Module) -> None:
        """Hook ``member``'s requests on ``model`` (or its DDP/DataParallel inner module), removing the hooks on any
        previous model of that member. Call it when a member is added, replaced or operated on. Without requests
        for ``member`` nothing is registered. An unknown path raises :class:`ConfigError`; the member is then left
        without hooks."""
        self._unhook(member)
        inner = _unwrap(model)
        _drop_inert_hooks(inner)
        self._models[member] = inner
        reqs = self._requests.get(member)
        if not reqs:
            return
        modules = {path: _resolve(inner, member, path) for path in reqs}
        token = self._tokens.get(member, 0) + 1
        self._tokens[member] = token
        handles = [inner.register_forward_pre_hook(_ResetHook(self, member, "", token, False, False))]
        for path, module in modules.items():
            r = reqs[path]
            handles.append(module.register_forward_hook(_TapHook(self, member, path, token, r.inputs, r.detach)))
        self._handles[member] = handles

    def remove(self, member: str | None = None, *, requests: bool = False) -> None:
        """Remove the hooks of ``member`` (every member if None) and forget its model and captures; its requests
        are kept for a later :meth:`attach` unless ``requests`` is true."""
        for name in [member] if member is not None else list(set(self._models) | set(self._requests)):
            self._unhook(name)
            self._models.pop(name, None)
            if requests:
                self._requests.pop(name, None)

    def _unhook(self, member: str) -> None:
        for h in self._handles.pop(member, []):
            h.remove()
        if member in self._tokens:
            self._tokens[member] += 1  # any hook that escaped removal (e.g. in a copy) is now stale
        for store in (self._outputs, self._inputs):
            for key in [k for k in store if k[0] == member]:
                del store[key]

    # -- reading ------------------------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget every captured tensor (the trainer calls this at each step start)."""
        self._outputs.clear()
        self._inputs.clear()

    @property
    def active(self) -> bool:
        """Whether any tap is requested."""
        return any(self._requests.values())

    def paths(self, member: str) -> list[str]:
        """The tapped paths of ``member``."""
        return list(self._requests.get(member, {}))

    def calls(self, member: str, path: str) -> int:
        """How many times the tapped module was called in the latest forward (0 if it was not)."""
        self._check(member, path, inputs=False)
        return len(self._outputs.get((member, path), []))

    def output(self, member: str, path: str) -> Any:
        """What module ``path`` of ``member`` returned in the latest forward (its last call if called repeatedly)."""
        return self._captured(member, path, inputs=False)[-1]

    def input(self, member: str, path: str) -> Any:
        """The input of module ``path`` in the latest forward; only for taps requested with ``inputs=True``."""
        return self._captured(member, path, inputs=True)[-1]

    def outputs_all(self, member: str, path: str) -> list[Any]:
        """The outputs of every call of module ``path`` in the latest forward, in call order."""
        return list(self._captured(member, path, inputs=False))

    def inputs_all(self, member: str, path: str) -> list[Any]:
        """The inputs of every call of module ``path`` in the latest forward, in call order."""
        return list(self._captured(member, path, inputs=True))

    def _check(self, member: str, path: str, *, inputs: bool) -> _Request:
        req = self._requests.get(member, {}).get(path)
        if req is None:
            have = ", ".join(repr(p) for p in self._requests.get(member, {})) or "none"
            raise ConfigError(f"feature tap {member}:{path!r} was not requested (taps.request({member!r}, "
                              f"{path!r})); requested taps of {member!r}: {have}")
        if inputs and not req.inputs:
            raise ConfigError(f"feature tap {member}:{path!r} was requested without inputs=True; its input is not "
                              "captured")
        return req

    def _captured(self, member: str, path: str, *, inputs: bool) -> list[Any]:
        self._check(member, path, inputs=inputs)
        got = (self._inputs if inputs else self._outputs).get((member, path))
        if not got:
            if member not in self._models:
                raise RuntimeError(f"feature tap {member}:{path!r}: member {member!r} is not attached "
                                   "(taps.attach(member, model))")
            raise RuntimeError(f"feature tap {member}:{path!r} captured nothing since the last clear(): {member!r} "
                               f"has not forwarded yet in this step, or its forward does not call module {path!r}")
        return got


# -- the last convolutional feature map --------------------------------------------------------------------------------
_LAYER_KINDS = ("conv", "linear")
# Calls that reduce a spatial map to one value per channel (the "global pooling" before a classifier).
_GLOBAL_POOLS = {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
                 "adaptive_max_pool2d", "adaptive_max_pool3d", "mean", "amax", "sum", "max", "nanmean",
                 "logsumexp", "norm", "std", "var"}


def _spatial(node: Node) -> bool:
    return len(node.shape) >= 3


def last_conv_feature(model: nn.Module, example: torch.Tensor, *, innermost: bool = False) -> str:
    """The module path whose output is the last convolutional feature map of the CNN ``model`` on ``example``.

    From the traced channel graph: the classifier is the last conv/linear layer on the way to the output; from its
    input, walk back through flatten/reshape/dropout calls and at most one global pooling (adaptive pooling or a
    reduction such as ``mean``) to the last map with spatial dims (3-D or more, i.e. Conv1d maps too). The answer is
    the outermost module whose forward returns exactly that tensor (``layer3`` of a CIFAR ResNet, ``features`` of
    VGG, ``relu3`` of the small CNN), or with ``innermost=True`` the most deeply nested one (``layer3.2.relu2``).
    Refuses (:class:`ConfigError`, one line) when no module returns the map (it is made by a functional call in some
    forward) or when the model has no such map."""
    model = _unwrap(model)
    name = type(model).__name__
    calls: list[tuple[str, Any]] = []  # (module path, output) of every module call of the traced forward
    handles = [m.register_forward_hook(lambda mod, a, out, p=p: calls.append((p, out)))
               for p, m in model.named_modules()]
    try:
        graph, tensors = trace_tensors(model, example)
    finally:
        for h in handles:
            h.remove()
    if not graph.outputs:
        raise ConfigError(f"last_conv_feature({name}): the model has no traced output")

    def producer(nid: int):
        p = graph.nodes[nid].producer
        return None if p is None else graph.ops[p]

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"last_conv_feature({name}): {why}; name the path to tap instead")

    # 1. the classifier: the last conv/linear call on the way back from the output
    nid = graph.outputs[0]
    while True:
        op = producer(nid)
        if op is None:
            raise refuse("found no conv or linear classifier before the output")
        if op.kind in _LAYER_KINDS:
            classifier = op
            break
        if len(op.inputs) != 1:
            raise refuse(f"the output comes from {op.name} of several feature tensors (in {op.context}), not from "
                         "one classifier")
        nid = op.inputs[0]
    # 2. back from the classifier's input to the last spatial map
    nid = classifier.inputs[0]
    crossed = False  # the spatial reduction (global pool or reduction to 2-D) has been walked through
    while True:
        node, op = graph.nodes[nid], producer(nid)
        if op is None:
            raise refuse(f"the classifier {classifier.module!r} reads the model input, not a feature map")
        if not _spatial(node):
            if op.kind in _LAYER_KINDS or op.kind == "norm" or len(op.inputs) != 1:
                raise refuse(f"the classifier {classifier.module!r} reads {op.name} (in {op.context}) of a "
                             "non-spatial tensor, not a pooled feature map")
            nid = op.inputs[0]
            if op.name in _GLOBAL_POOLS and _spatial(graph.nodes[nid]):
                crossed = True
            continue
        if (not crossed and op.kind not in _LAYER_KINDS and op.kind != "norm" and op.name in _GLOBAL_POOLS
                and len(op.inputs) == 1 and all(s == 1 for s in node.shape[2:])
                and _spatial(graph.nodes[op.inputs[0]])):
            nid, crossed = op.inputs[0], True
            continue
        break
    if graph.nodes[nid].producer is None:
        raise refuse("the last feature map is the model input")
    target = tensors[nid]
    found = [(i, path) for i, (path, out) in enumerate(calls) if out is target]
    if not found:
        op = producer(nid)
        where = op.context if op.context else name
        raise refuse(f"the last feature map {tuple(graph.nodes[nid].shape)} is made by the functional call "
                     f"{op.name} in the forward of {where} and no module returns it")
    depth = (lambda p: 0 if p == "" else p.count(".") + 1)
    if innermost:
        return max(found, key=lambda f: (depth(f[1]), f[0]))[1]
    return min(found, key=lambda f: (depth(f[1]), -f[0]))[1]
