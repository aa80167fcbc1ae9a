"""Keep ``torch._dynamo`` (the compiler, about as long to import as torch itself) out of runs that never compile.

torch 2.13 imports ``torch._dynamo`` in three eager paths, only to mark code "do not compile": the wrapper
``torch._disable_dynamo`` around the optimizer's ``add_param_group``, ``zero_grad``, ``state_dict`` and
``load_state_dict`` and around every ``TorchDispatchMode.__torch_dispatch__`` (torch's flop counter), and the
wrapper of ``SGD.step`` / ``Adam.step`` (``_use_grad_for_differentiable``: grad mode off, ``graph_break()``).
Nothing can be compiling before ``torch._dynamo`` is imported, so until then those markers change nothing:

* :func:`defer` makes the ``_disable_dynamo`` wrappers call their function directly while ``torch._dynamo`` is
  not loaded, and build torch's own marker the first time they are called after something else loaded it;
* :func:`eager` gives an optimizer class whose ``step`` sets the grad mode exactly as torch's wrapper does and calls
  torch's step, and defers to torch's wrapper itself once ``torch._dynamo`` is loaded (a user's ``torch.compile``).

Eager results are the same bit for bit (the tests compare trained weights); a run no longer pays for the import.
If torch's wrappers change shape (a new version), both leave them alone.
"""

from __future__ import annotations

import sys
from typing import Any


def _shim(raw: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" in sys.modules:  # someone else loaded the compiler: use torch's own marker from now on
            import torch._dynamo

            real = torch._dynamo.disable(raw, True, wrapping=False)
            raw.__dynamo_disable = real
            return real(*args, **kwargs)
        return raw(*args, **kwargs)

    return call


def _defer_one(wrapper: Any) -> bool:
    raw = getattr(wrapper, "__wrapped__", None)
    code = getattr(wrapper, "__code__", None)
    if raw is None or code is None or not code.co_filename.endswith("_compile.py") or \
            getattr(raw, "__dynamo_disable", None) is not None:
        return False
    raw.__dynamo_disable = _shim(raw)
    return True


def defer() -> int:
    """Install the shims (idempotent); returns how many wrappers it changed."""
    if "torch._dynamo" in sys.modules:
        return 0
    import torch.optim

    changed = 0
    for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict"):
        changed += _defer_one(torch.optim.Optimizer.__dict__.get(name))
    try:
        from torch.utils.flop_counter import _FlopCounterMode
    except ImportError:
        return changed
    return changed + _defer_one(_FlopCounterMode.__dict__.get("__torch_dispatch__"))


_EAGER: dict[type, type] = {}


def eager(cls: type) -> type:
    """A subclass of the torch optimizer ``cls`` (``torch.optim.SGD``, ``Adam``) that imports no ``torch._dynamo``
    in ``step`` while it is not loaded; ``cls`` itself when its ``step`` is not the wrapper this module knows."""
    if cls in _EAGER:
        return _EAGER[cls]
    torch_step = cls.__dict__.get("step")
    while torch_step is not None and getattr(torch_step, "__code__", None) is not None and \
            torch_step.__code__.co_name != "_use_grad" and hasattr(torch_step, "__wrapped__"):
        torch_step = torch_step.__wrapped__  # under the profiling hook torch adds to the class on first use
    raw = getattr(torch_step, "__wrapped__", None)
    if torch_step is None or getattr(torch_step, "__code__", None) is None or \
            torch_step.__code__.co_name != "_use_grad" or raw is None:
        _EAGER[cls] = cls
        return cls
    import torch

    def step(self: Any, closure: Any = None) -> Any:
        if "torch._dynamo" in sys.modules:
            return torch_step(self, closure)
        previous = torch.is_grad_enabled()
        try:  # what torch's _use_grad wrapper does, less its graph break (a no-op when nothing compiles)
            torch.set_grad_enabled(self.defaults["differentiable"])
            return raw(self, closure)
        finally:
            torch.set_grad_enabled(previous)

    step.__doc__ = raw.__doc__
    sub = type(cls.__name__, (cls,), {"step": step, "__module__": __name__, "__doc__": cls.__doc__})
    _EAGER[cls] = sub
    return sub
