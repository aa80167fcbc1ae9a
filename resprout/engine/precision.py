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
from typing import Any

import torch

from resprout.errors import ConfigError
from resprout.hardware import (EMULATED_ENV, PORTABLE_ENV, PRECISIONS, cpu_capability, cpu_native_bf16,  # noqa: F401
                               device_of, native_bf16, reading, resolve_auto, resolve_channels_last,
                               resolve_precision)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolved_keys(config: Any, device: torch.device | str) -> dict:
    """``{"precision", "channels_last"}`` of ``config`` with ``auto`` resolved for ``device``, checked: a
    precision the device cannot run is one ConfigError."""
    return {"precision": resolve_precision(config.precision, device),
            "channels_last": resolve_channels_last(config.channels_last, config.model)}


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
