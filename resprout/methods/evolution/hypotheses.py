"""Knowledge Evolution's pure functions (Taha et al., CVPR 2021): split masks (Sec. 3.2), the re-initialization of
the reset hypothesis (Eq. 1), fit/reset magnitudes (Fig. 7) and the slim fit hypothesis as a real network.

They import only torch and resprout's surgery layer, so any training loop can call them::

    masks = kels_masks(model, (3, 32, 32), split_rate=0.5)       # or wels_masks(model, 0.5, seed=0)
    ...train a generation...
    reinitialize(model, masks, default_init(model, masks))         # Eq. 1
    slim = fit_hypothesis(model, (3, 32, 32), split_rate=0.5)      # KELS only
"""

from __future__ import annotations

import math

import torch
from torch import nn

from resprout.errors import ConfigError
from resprout.seeding import derive_seed
from resprout.surgery.channels import (
    FIXED_KINDS,
    Group,
    GroupPlan,
    LayerPlan,
    NodePlan,
    channel_groups,
    example_input,
    layer_masks,
    layer_plans,
    model_device,
    node_maps,
)
from resprout.surgery.graph import ChannelGraph, trace
from resprout.surgery.resize import resize

# -- split masks (Sec. 3.2) ------------------------------------------------------------------------------------------


def wels_masks(model: nn.Module, split_rate: float, seed: int) -> dict[str, torch.Tensor]:
    """Weight-level split (WELS): per weight tensor, a seeded random mask with ``round(s_r * |W|)`` ones.

    Every parameter with two or more dimensions is split: the weights of convolutions, linear layers and any other
    weight-bearing layer (embeddings, recurrent weights). Biases and normalization parameters are not (Sec. 3.1).
    """
    _check_rate(split_rate)
    masks = {}
    for i, (name, p) in enumerate(model.named_parameters()):
        if p.ndim < 2:
            continue
        g = torch.Generator().manual_seed(derive_seed(seed, 0x3E15, i))
        n = p.numel()
        keep = torch.randperm(n, generator=g)[: round(split_rate * n)]
        mask = torch.zeros(n, dtype=torch.bool)
        mask[keep] = True
        masks[name] = mask.view(p.shape).to(p.device)
    return masks


def kels_masks(model: nn.Module, input_shape: tuple[int, ...], split_rate: float) -> dict[str, torch.Tensor]:
    """Kernel-level split (KELS): the first ``ceil(s_r C_i)`` kernels of the first ``ceil(s_r C_o)`` filters.

    Found on the traced channel groups (:func:`prefix_plan`): the first convolution keeps every input channel, the
    classifier every class, a layer reading a concatenation the first ``ceil(s_r c_j)`` channels of each chunk, a
    depthwise convolution the channels of its input, a grouped convolution the first ``ceil(s_r C/g)`` channels of
    each of its ``g`` groups (inputs and outputs). BN and biases are not masked.
    """
    _check_rate(split_rate)
    _, _, layers = kels_plan(model, input_shape, split_rate)
    return layer_masks(model, layers)


def prefix_plan(groups: dict[str, Group], split_rate: float) -> GroupPlan:
    """The KELS plan (Sec. 3.2, Fig. 3) as a resize plan: the first ``ceil(s_r C)`` channels of every group.

    A group is every set of channels cut together (:func:`~resprout.surgery.channels.channel_groups`), so a residual
    add keeps one prefix, a concatenation keeps the prefix of each chunk (App. B) and a depthwise convolution keeps
    its input's channels. A group that a grouped convolution splits into ``g`` blocks (ResNeXt, RegNet) keeps the
    first ``ceil(s_r C/g)`` channels of every block: the prefix of each of the convolution's groups, so that the
    slim convolution has ``g`` equal groups again and computes exactly what the masked dense one does (the paper's
    Fig. 3 rule applied per group; the official code has no grouped convolutions). The image and the classes keep
    everything, and so do channels that no conv/linear layer writes (opaque calls); a group that some consumer
    cannot follow is refused.
    """
    if not 0 < split_rate <= 1:
        raise ConfigError(f"bad split rate {split_rate} (must be in (0, 1])")
    plan: GroupPlan = {}
    for key, g in groups.items():
        if g.kind in FIXED_KINDS:
            continue
        if not g.resizable:
            raise ConfigError(f"cannot cut channel group '{key}' as a prefix: {g.reason}")
        size = g.channels // g.blocks
        n = math.ceil(split_rate * size)
        if n < size:
            plan[key] = [b * size + t for b in range(g.blocks) for t in range(n)]
    return plan


def kels_plan(model: nn.Module, input_shape: tuple[int, ...], split_rate: float
              ) -> tuple[ChannelGraph, NodePlan, dict[str, LayerPlan]]:
    """Trace ``model`` and build its KELS plan: (graph, kept channels per feature map, kept channels per layer)."""
    graph = trace(model, example_input(input_shape, device=model_device(model)))
    groups = channel_groups(graph)
    plan = node_maps(groups, prefix_plan(groups, split_rate))
    return graph, plan, layer_plans(graph, plan)


def _check_rate(split_rate: float) -> None:
    if not 0 < split_rate < 1:
        raise ConfigError(f"bad value for ke.split_rate: {split_rate} (must be strictly between 0 and 1)")


# -- re-initialization (Eq. 1) ------------------------------------------------------------------------------------


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


@torch.no_grad()
def default_init(model: nn.Module, names) -> dict[str, torch.Tensor]:
    """Fresh values for the named parameters from each layer's own default initializer (``reset_parameters``:
    Kaiming-uniform for PyTorch's conv and linear layers, as in the paper). The model itself is left unchanged."""
    fresh = {}
    for name in names:
        module, attr = _owner(model, name)
        if not hasattr(module, "reset_parameters"):
            raise ConfigError(f"layer of {name!r} ({type(module).__name__}) has no default initializer "
                              f"(reset_parameters); use ke.reinit=zeros or ke.reinit=initial")
        saved = {k: t.clone() for k, t in list(module.named_parameters(recurse=False))
                 + list(module.named_buffers(recurse=False))}
        module.reset_parameters()
        fresh[name] = getattr(module, attr).detach().clone()
        for k, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            t.copy_(saved[k])
    return fresh


@torch.no_grad()
def reinitialize(model: nn.Module, masks: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]) -> None:
    """Eq. 1: ``F_l = M_l F_l + (1 - M_l) F_l^r`` for every masked parameter, in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params[name]
        p.copy_(torch.where(mask, p, fresh[name].to(p.device, p.dtype)))


@torch.no_grad()
def reset_batchnorm(model: nn.Module) -> None:
    """Reset every BN layer's affine parameters and running statistics (an option; the paper carries BN over)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()


@torch.no_grad()
def hypothesis_magnitudes(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Mean absolute weight inside the fit and the reset hypothesis of every masked layer (paper Fig. 7)."""
    params = dict(model.named_parameters())
    out = {}
    for name, mask in masks.items():
        w = params[name].abs()
        fit, reset = w[mask], w[~mask]
        out[name] = (fit.mean().item() if fit.numel() else 0.0, reset.mean().item() if reset.numel() else 0.0)
    return out


# -- the slim fit hypothesis ------------------------------------------------------------------------------------------


def fit_hypothesis(model: nn.Module, input_shape: tuple[int, ...], split_rate: float) -> nn.Module:
    """The KELS fit hypothesis of ``model`` as a real, smaller network (a new module; ``model`` is untouched):
    :func:`~resprout.surgery.resize.resize` with the :func:`prefix_plan`.

    In eval mode its output equals the dense network's output once the reset hypothesis is zeroed (its weights
    and the BN scale and shift of its channels). BN running statistics are copied from the dense network;
    see :func:`reestimate_batchnorm`.
    """
    _check_rate(split_rate)
    example = example_input(input_shape, device=model_device(model))
    return resize(model, prefix_plan(channel_groups(trace(model, example)), split_rate), example).model


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches) -> None:
    """Recompute BN running statistics as the plain average over ``batches`` (a beyond-the-paper option: the slim
    network's channels see different inputs than in the dense network, so the copied statistics can be wrong)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was = model.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for x in batches:
        model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was)


