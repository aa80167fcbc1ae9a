"""Knowledge Evolution (Taha, Shrivastava and Davis, "Knowledge Evolution in Neural Networks", CVPR 2021).

The network is split, once and for all, into a *fit hypothesis* (mask 1) and a *reset hypothesis* (mask 0). It
trains for ``e`` epochs per generation; between generations the reset hypothesis is re-initialized (Eq. 1) and the
fit hypothesis carries the knowledge over. The mask is not applied in the forward pass (Algorithm 1): every weight
trains in every generation. With the kernel-level split (KELS, Sec. 3.2, Fig. 3) the fit hypothesis is a slim
network that :func:`fit_hypothesis` extracts as a real, smaller ``nn.Module``.

Pure functions, usable from any training loop::

    masks = kels_masks(model, (3, 32, 32), split_rate=0.5)       # or wels_masks(model, 0.5, seed=0)
    ...train a generation...
    reinitialize(model, masks, default_init(model, masks))         # Eq. 1
    slim = fit_hypothesis(model, (3, 32, 32), split_rate=0.5)      # KELS only

:class:`KnowledgeEvolution` (``method=ke``) does this between the trainer's generations, evaluates the dense
``N_g`` and the slim ``H_g`` after every generation, and records the mean absolute weight of the fit and reset
hypotheses per layer (Fig. 7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from resprout.config import option
from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.seeding import derive_seed
from resprout.surgery.channels import example_input, extract, kels_plan, layer_masks, model_device
from resprout.surgery.profile import profile_model

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

    Found on the traced channel graph (:mod:`resprout.surgery.channels`): the first convolution keeps every input
    channel, the classifier every class, a layer reading a concatenation the first ``ceil(s_r c_j)`` channels of each
    chunk, a depthwise convolution the channels of its input. BN and biases are not masked.
    """
    _check_rate(split_rate)
    _, _, layers = kels_plan(model, input_shape, split_rate)
    return layer_masks(model, layers)


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
    """The KELS fit hypothesis of ``model`` as a real, smaller network (a new module; ``model`` is untouched).

    In eval mode its output equals the dense network's output once the reset hypothesis is zeroed (its weights
    and the BN scale and shift of its channels). BN running statistics are copied from the dense network;
    see :func:`reestimate_batchnorm`.
    """
    _check_rate(split_rate)
    graph, plan, _ = kels_plan(model, input_shape, split_rate)
    return extract(model, graph, plan, example_input(input_shape, device=model_device(model)))


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


# -- the method ---------------------------------------------------------------------------------------------------------


@dataclass
class KEOptions:
    split: str = option("kels", "kels (kernel level, gives a slim network) or wels (weight level)",
                        choices=("kels", "wels"))
    split_rate: float = option(0.5, "s_r: share of each layer in the fit hypothesis", min=0.0, max=1.0)
    reinit: str = option("default", "how the reset hypothesis is re-initialized: the layer's default "
                         "initializer, zeros, or a fresh draw of the model's initial distribution",
                         choices=("default", "zeros", "initial"))
    reset_bn: bool = option(False, "reset batch-norm layers between generations (the paper carries them over)")
    handover: str = option("last", "weights handed to the next generation: last epoch or best on validation",
                           choices=("last", "best"))
    slim_bn: str = option("both", "slim network BN statistics: copied from the dense network, re-estimated on "
                          "training batches, or both (both are evaluated)", choices=("copy", "reestimate", "both"))
    slim_bn_batches: int = option(20, "training batches used to re-estimate the slim network's BN", min=1)
    member: str = option("model", "the member that evolves")


class KnowledgeEvolution(Method):
    """``method=ke``: split, re-initialize the reset hypothesis between generations, evaluate N_g and H_g."""

    name = "ke"
    Options = KEOptions

    def __init__(self, options=None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        _check_rate(self.options.split_rate)
        self.masks: dict[str, torch.Tensor] = {}
        self.best: dict = {}  # handover=best: {"top1", "state"} of the current generation

    def setup(self, trainer) -> None:
        opts = self.options
        if opts.member not in trainer.members:
            raise ConfigError(f"ke.member={opts.member!r} is not a member of this run "
                              f"({', '.join(trainer.members)})")
        if opts.handover == "best" and "val" not in trainer.eval_loaders:
            raise ConfigError("ke.handover=best needs a validation split: set val_split (e.g. val_split=0.1)")
        if opts.reinit == "initial" and trainer.config.model.startswith("custom:"):
            raise ConfigError("ke.reinit=initial re-draws from the model's builder; a custom module has none "
                              "(use ke.reinit=default or zeros)")
        self.input_shape = trainer.input_shape

    def on_fit_start(self, trainer) -> None:
        # after every method's setup (another method may have replaced a head), before any generation; the masks
        # depend only on shapes and the seed, so a resumed run computes the same ones
        opts = self.options
        model = trainer.members[opts.member].model
        if opts.split == "kels":
            self.masks = kels_masks(model, self.input_shape, opts.split_rate)
        else:
            self.masks = wels_masks(model, opts.split_rate, seed=trainer.config.seed)

    # -- events ---------------------------------------------------------------------------------------------------------
    def on_generation_start(self, trainer) -> None:
        if trainer.generation == 0:
            return
        model = trainer.members[self.options.member].model
        if self.options.handover == "best" and self.best:
            model.load_state_dict(self.best["state"])
        self.best = {}
        reinitialize(model, self.masks, self._fresh(trainer, model))
        if self.options.reset_bn:
            reset_batchnorm(model)

    def _fresh(self, trainer, model: nn.Module) -> dict[str, torch.Tensor]:
        how = self.options.reinit
        if how == "zeros":
            return {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in self.masks}
        if how == "default":
            return default_init(model, self.masks)
        # "initial": a freshly built network of the same architecture, seeded by (seed, generation)
        from resprout.models import build_model

        cfg = trainer.config
        state = torch.get_rng_state()
        torch.manual_seed(derive_seed(cfg.seed, 0x1717, trainer.generation) % (1 << 62))
        try:
            twin = build_model(cfg.model, in_channels=self.input_shape[0],
                               num_classes=_num_classes(model, self.input_shape), **cfg.model_kwargs())
        finally:
            torch.set_rng_state(state)
        twin_params = dict(twin.named_parameters())
        return {n: twin_params[n].detach() for n in self.masks}

    def on_after_evaluate(self, trainer) -> None:
        if self.options.handover != "best":
            return
        evals = trainer.last_eval.get(self.options.member, {})
        if "val" in evals and (not self.best or evals["val"]["top1"] > self.best["top1"]):
            model = trainer.members[self.options.member].model
            self.best = {"top1": evals["val"]["top1"],
                         "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}

    def on_generation_end(self, trainer) -> None:
        member = self.options.member
        model = trainer.members[member].model
        magnitudes = hypothesis_magnitudes(model, self.masks)
        per_layer = {}
        for name, (fit, reset) in magnitudes.items():
            layer = name.removesuffix(".weight")
            per_layer[f"fit_abs/{layer}"] = fit
            per_layer[f"reset_abs/{layer}"] = reset
        trainer.log_generation(member, per_layer, in_results=False)
        metrics: dict[str, float] = {
            "fit_abs": sum(f for f, _ in magnitudes.values()) / max(len(magnitudes), 1),
            "reset_abs": sum(r for _, r in magnitudes.values()) / max(len(magnitudes), 1)}
        if self.options.split == "kels":
            slim = self.slim_network(trainer, reestimate_bn=False)
            if self.options.slim_bn in ("copy", "both"):
                metrics.update({f"slim_{k}": v for k, v in trainer.evaluate(slim, "test").items()})
            if self.options.slim_bn in ("reestimate", "both"):
                self.reestimate_bn(trainer, slim)
                metrics.update({f"slim_bnfix_{k}": v for k, v in trainer.evaluate(slim, "test").items()})
            prof = profile_model(slim, self.input_shape, device=model_device(slim))
            metrics.update({"slim_params": prof.params, "slim_macs": prof.macs})
        trainer.log_generation(member, metrics)

    def slim_network(self, trainer, *, reestimate_bn: bool) -> nn.Module:
        """The evolving member's fit hypothesis as a real network (KELS runs only)."""
        if self.options.split != "kels":
            raise ConfigError(f"ke.split={self.options.split}: only the kernel-level split (kels) has a slim network")
        slim = fit_hypothesis(trainer.members[self.options.member].model, trainer.input_shape,
                              self.options.split_rate)
        if reestimate_bn:
            self.reestimate_bn(trainer, slim)
        return slim

    def reestimate_bn(self, trainer, slim: nn.Module) -> None:
        """Re-estimate ``slim``'s BN statistics on the first ``slim_bn_batches`` training batches of the current
        generation (position-seeded, so a resumed run uses the same batches)."""
        loader, g = trainer.train_loader, trainer.generation
        n = min(self.options.slim_bn_batches, loader.steps(g, 0))
        reestimate_batchnorm(slim, (loader.batch(g, 0, s)[0] for s in range(n)))

    # -- state -----------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        # the masks are recomputed identically at setup; the best weights of a generation are not
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best", {})


def _num_classes(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(example_input(input_shape, device=model_device(model)))
    model.train(was)
    return out.shape[1]
