"""What a run computes in and how its tensors are laid out: ``precision``, ``channels_last`` and ``compile``.

* ``precision=fp32|bf16|fp16|auto``. bf16 and fp16 are *autocast* (``torch.autocast``): the trainer wraps the forward
  of every member and the loss terms of every update step (and evaluation) in it, so convolutions and matrix
  products run in the low precision while weights, optimizer state, BN statistics and checkpoints stay fp32
  (autocast casts on the fly and never changes a module's state). Backward runs outside the context, as torch
  recommends. ``auto`` is bf16 where the device computes it natively and fp32 elsewhere (:func:`native_bf16`);
  the run's config stores what it resolved to, so a resume elsewhere trains as the run began.
* fp16 is for CUDA only, with a gradient scaler (``torch.amp.GradScaler``): the loss is scaled before backward,
  the gradients unscaled before the methods see them; a step whose gradients overflowed is skipped and the scale
  lowered, and such a skip is not a divergence (the trainer's divergence check reads the loss, which autocast
  computes in fp32).
* bf16 on a device that only emulates it is refused: on a CPU without AVX-512 BF16 or AMX, torch's emulated bf16
  convolutions are 10-14x *slower* than fp32 (BENCHMARKS.md, "precision"). ``RESPROUT_ALLOW_EMULATED_BF16=1`` allows
  it anyway, for its numerics (the test suite sets it, to test every method in bf16 on any CPU).
* ``channels_last=auto`` (:func:`resolve_channels_last`): on for resprout's architectures and ``tv:``/``timm:``
  ones: all are 2-d CNNs fed image batches, for which channels-last was faster or equal on every model measured
  (BENCHMARKS.md, "precision"); off for a module of your own, which may reshape a feature map with ``.view``
  (which a channels-last tensor refuses). ``channels_last=true`` turns it on for any model.
* ``RESPROUT_PORTABLE=1`` makes both ``auto`` keys resolve to fp32 and NCHW on every machine, so results do not
  depend on the kind of machine (the test suite sets it; its reference loops are fp32 NCHW).
* ``compile=true`` wraps every trainable member's training forward in ``torch.compile``; refused where torch
  cannot compile (:func:`compile_problem`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import torch

from resprout.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
EMULATED_ENV = "RESPROUT_ALLOW_EMULATED_BF16"
PORTABLE_ENV = "RESPROUT_PORTABLE"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _check(fn: str, owner: Any) -> bool:
    """A torch capability check by name (private ones may vanish in another torch: then False)."""
    f = getattr(owner, fn, None)
    try:
        return bool(f()) if callable(f) else False
    except Exception:  # noqa: BLE001  (a check that cannot run reports no capability)
        return False


def cpu_capability() -> str:
    """What torch's CPU kernels were dispatched for on this machine (``AVX2``, ``AVX512``, ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001
        return "unknown"


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: AVX-512 BF16 or AMX tiles, by torch's own checks."""
    return _check("_is_avx512_bf16_supported", torch.cpu) or _check("_is_amx_tile_supported", torch.cpu)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA: ``torch.cuda.is_bf16_supported`` without emulation)."""
    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # an older signature
            return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_native_bf16()
    return False


def _device_text(device: torch.device) -> str:
    if device.type == "cpu":
        return f"this CPU ({cpu_capability()}: no AVX-512 BF16, no AMX)"
    return f"device {device}"


_READING = [0]  # > 0 inside reading(): a saved run is opened to be read, not trained


@contextlib.contextmanager
def reading():
    """Open saved runs in whatever precision they trained in, even where the device only emulates it (evaluating
    or exporting a run made on another machine: slow but exact; training there is refused)."""
    _READING[0] += 1
    try:
        yield
    finally:
        _READING[0] -= 1


def resolve_precision(value: str, device: torch.device | str) -> str:
    """``value`` with ``auto`` resolved for ``device``; a precision the device cannot run is one ConfigError."""
    device = torch.device(device)
    if value not in PRECISIONS:
        raise ConfigError(f"bad value for precision: {value!r} (allowed: {', '.join(PRECISIONS)})")
    if value == "auto":
        if _flag(PORTABLE_ENV):
            return "fp32"
        return "bf16" if native_bf16(device) else "fp32"
    if _READING[0]:
        return value
    if value == "fp16" and device.type != "cuda":
        raise ConfigError(f"precision=fp16 runs on CUDA only (with a gradient scaler), this run is on {device}; "
                          f"use precision=auto, bf16 or fp32")
    if value == "bf16" and not native_bf16(device) and not _flag(EMULATED_ENV):
        raise ConfigError(f"precision=bf16 but {_device_text(device)} only emulates bf16, many times slower than "
                          f"fp32; use precision=auto or fp32, or set {EMULATED_ENV}=1 to run it anyway")
    return value


def resolve_channels_last(value: Any, model: str) -> bool:
    """``channels_last`` with ``auto`` resolved for architecture ``model`` (the config's ``model`` key)."""
    if value != "auto":
        return bool(value)
    if _flag(PORTABLE_ENV):
        return False
    return not str(model).startswith("custom:")


def device_of(name: str) -> torch.device:
    """The device kind a ``device`` key names (``auto``: CUDA when there is one), without checking it exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolved_keys(config: Any, device: torch.device | str) -> dict:
    """``{"precision", "channels_last"}`` of ``config`` with ``auto`` resolved for ``device``, checked: a
    precision the device cannot run is one ConfigError."""
    return {"precision": resolve_precision(config.precision, device),
            "channels_last": resolve_channels_last(config.channels_last, config.model)}


def resolve_auto(config: Any) -> dict:
    """The ``auto`` keys of ``config`` as they resolve on this machine, unchecked (for comparing a config with a
    stored one: :meth:`resprout.config.Config.identity`)."""
    out = {}
    if config.precision == "auto":
        out["precision"] = resolve_precision("auto", device_of(config.device))
    if config.channels_last == "auto":
        out["channels_last"] = resolve_channels_last("auto", config.model)
    return out


def autocast(precision: str, device: torch.device):
    """The context the trainer computes forwards and losses in: ``torch.autocast`` for bf16/fp16, nothing for fp32
    (so fp32 runs are exactly what they were without it)."""
    if precision in DTYPES:
        return torch.autocast(device.type, dtype=DTYPES[precision])
    return contextlib.nullcontext()


def grad_scaler(precision: str, device: torch.device):
    """fp16's gradient scaler (None for every other precision)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def compile_problem(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` cannot compile for ``device`` here (None: it can). Imports the compiler (seconds):
    call it only for runs that ask for ``compile=true``."""
    return _compile_problem(torch.device(device).type)


@functools.lru_cache(maxsize=None)
def _compile_problem(kind: str) -> str | None:
    device = torch.device(kind)
    try:
        from torch._dynamo.eval_frame import check_if_dynamo_supported

        check_if_dynamo_supported()
    except Exception as e:  # noqa: BLE001
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "no triton for CUDA kernels (pip install triton)"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # noqa: BLE001
        return "no C++ compiler found for inductor's CPU kernels (install g++, or set CXX)"
    return None


def check_compile(device: torch.device | str) -> None:
    problem = compile_problem(device)
    if problem is not None:
        raise ConfigError(f"compile=true but torch cannot compile here: {problem}; use compile=false")


def describe(precision: str, channels_last: bool, compiled: bool = False) -> str:
    """How a run computes, for its epoch line: ``fp32``, ``bf16 channels-last``, ``bf16 channels-last compiled``."""
    return " ".join([precision] + (["channels-last"] if channels_last else []) + (["compiled"] if compiled else []))
