"""``method=ke``: Knowledge Evolution between the trainer's generations (Taha et al., CVPR 2021, Algorithm 1).

The network is split once into a fit and a reset hypothesis; after every generation the reset hypothesis is
re-initialized (Eq. 1), the dense ``N_g`` and the slim ``H_g`` are evaluated, and the mean absolute weight of both
hypotheses is recorded per layer (Fig. 7). The ideas live in :mod:`.hypotheses`; this class decides when.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from resprout.config import option
from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.evolution.hypotheses import (
    _check_rate, default_init, fit_hypothesis, hypothesis_magnitudes, kels_masks, reestimate_batchnorm, reinitialize, reset_batchnorm, wels_masks)
from resprout.seeding import derive_seed
from resprout.surgery.channels import check_traceable, example_input, model_device
from resprout.surgery.profile import profile_model


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
        if opts.reinit == "initial" and trainer.model_factory is None:
            raise ConfigError("ke.reinit=initial re-draws from the model's builder; this run has none (pass a "
                              "model factory, e.g. module=MyNet instead of module=MyNet(), or use ke.reinit=default)")
        self.input_shape = trainer.input_shape

    def on_fit_start(self, trainer) -> None:
        # after every method's setup (another method may have replaced a head), before any generation; the masks
        # depend only on shapes and the seed, so a resumed run computes the same ones
        opts = self.options
        model = trainer.members[opts.member].model
        if opts.split == "kels":
            # refuse now, not after a generation has trained: a model channel surgery cannot follow (a weight
            # computed in the forward pass, channels mixed by an opaque call), then one dry run of the slim network;
            # grouped convolutions are fine: the prefix plan cuts each of their groups alike
            check_traceable(model, example_input(self.input_shape, device=model_device(model)), grouped=True)
            self.masks = kels_masks(model, self.input_shape, opts.split_rate)
            fit_hypothesis(model, self.input_shape, opts.split_rate)  # discarded; its refusals are what counts
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
        twin = trainer.new_model(derive_seed(trainer.config.seed, 0x1717, trainer.generation) % (1 << 62))
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
