"""The machine a run starts on, and what its ``auto`` keys resolve to there: ``precision=auto`` (bf16 where the
device computes it natively, else fp32) and ``channels_last=auto`` (on for resprout's and tv:/timm: models). The
rules are explained in :mod:`resprout.engine.precision`, which uses them to train.

This module sits at the bottom of the layers, beside :mod:`resprout.config`, because a config's identity (what a
run computes, :meth:`resprout.config.Config.identity`) counts an ``auto`` key as what it resolves to here. It
imports torch: import it only where a config must be resolved.
"""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Any

import torch

from resprout.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
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


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`), or ``unknown``: in bf16 two
    CPUs' kernels can round differently, so a run records which one trained it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
    # a detector (tv-det:) takes a list of images of several sizes, batched inside the model: left as it is
    return not str(model).startswith(("custom:", "tv-det:"))


def device_of(name: str) -> torch.device:
    """The device kind a ``device`` key names (``auto``: CUDA when there is one), without checking it exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_auto(config: Any) -> dict:
    """The ``auto`` keys of ``config`` as they resolve on this machine, unchecked (for comparing a config with a
    stored one: :meth:`resprout.config.Config.identity`)."""
    out = {}
    if config.precision == "auto":
        out["precision"] = resolve_precision("auto", device_of(config.device))
    if config.channels_last == "auto":
        out["channels_last"] = resolve_channels_last("auto", config.model)
    return out
