"""Dense-Sparse-Dense training (Han et al., "DSD: Dense-Sparse-Dense Training for Deep Neural Networks", ICLR 2017).

Three phases (Han et al. Sec. 2, Algorithm 1):

1. **Dense**: ordinary training, which learns the weights and which connections matter.
2. **Sparse**: in every layer the ``sparsity`` fraction of weights with the smallest magnitude is pruned (the
   threshold is the k-th smallest ``|W|`` of that layer, Sec. 2 "Sparse training"), and the network trains under
   that sparsity constraint: the mask is re-applied after every step.
3. **Re-dense**: the constraint is removed; the pruned weights come back at zero and the whole network trains at a
   lower learning rate (1/10 of the original in the DSD paper, ``dsd.redense_lr``).

The Knowledge Evolution paper uses DSD as a baseline (Taha et al., CVPR 2021, Sec. 4.1 and Table 2): 30% sparsity
per layer and 200/100/100 epochs, because the loss-convergence criterion of the DSD paper does not work on small
datasets. Here the phases are epochs within one run (``dsd.phases=epochs``: by default a third of the epochs
each, so ``epochs=9`` is 3+3+3) or the trainer's generations (``dsd.phases=generations``, ``generations=3``: every
phase gets a fresh optimizer and schedule).

What is pruned: every weight tensor with two or more dimensions (convolutions and linear layers, as in the DSD
paper); biases and normalization parameters are never pruned. During the sparse phase the mask acts on the
weights, their gradients and the optimizer's per-weight state (momentum, Adam moments), so a pruned weight is
exactly zero after every step whatever the momentum or weight decay, and the re-dense phase does not start with a
stale velocity at the pruned positions (a detail the DSD paper does not spell out; zero is its re-init value).

The pure functions (:func:`magnitude_masks`, :func:`apply_masks`, :func:`mask_gradients`,
:func:`mask_optimizer_state`, :func:`dsd_phases`) work in any training loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from resprout.config import option
from resprout.engine.method import Method
from resprout.errors import ConfigError

__all__ = ["DSDOptions", "DenseSparseDense", "MaskedTraining", "apply_masks", "carry_masks", "dsd_phases", "magnitude_masks",
           "mask_gradients", "mask_optimizer_state", "prunable_weights"]


# -- pure functions ----------------------------------------------------------------------------------------------------
def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights DSD prunes: every trainable parameter with two or more dimensions (conv and linear weights)."""
    return {n: p for n, p in model.named_parameters() if p.ndim >= 2 and p.requires_grad}


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Per layer, a boolean mask (True = kept) that prunes exactly ``round(sparsity * |W|)`` weights of smallest
    magnitude (Han et al. 2017, Sec. 2: the threshold is the layer's k-th smallest ``|W|``). Ties are broken by
    position, so the count is exact and the mask deterministic."""
    if not 0 <= sparsity < 1:
        raise ConfigError(f"bad value for dsd.sparsity: {sparsity} (must be in [0, 1))")
    masks = {}
    for name, p in prunable_weights(model).items():
        flat = p.detach().abs().flatten()
        k = round(sparsity * flat.numel())
        mask = torch.ones(flat.numel(), dtype=torch.bool, device=p.device)
        if k:
            order = torch.sort(flat, stable=True).indices
            mask[order[:k]] = False
        masks[name] = mask.view(p.shape)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked-out entries of the named parameters, in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].masked_fill_(~mask, 0.0)


@torch.no_grad()
def mask_gradients(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the gradients of the masked-out entries (call between backward and the optimizer step)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        grad = params[name].grad
        if grad is not None:
            grad.masked_fill_(~mask, 0.0)


@torch.no_grad()
def mask_optimizer_state(optimizer: torch.optim.Optimizer | None, model: nn.Module,
                         masks: dict[str, torch.Tensor]) -> None:
    """Zero the optimizer's per-weight state (momentum buffer, Adam moments) at the masked-out entries."""
    if optimizer is None:
        return
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        for value in optimizer.state.get(params[name], {}).values():
            if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                value.masked_fill_(~mask, 0.0)


def carry_masks(masks: dict[str, torch.Tensor], model: nn.Module, index_maps: dict | None) -> dict[str, torch.Tensor]:
    """Masks of ``model`` after a surgery: kept channels keep their mask entries, new channels are unpruned (they
    are new weights, not pruned ones). ``index_maps`` is the surgery's ``{param: {dim: [old index or -1]}}``; a
    parameter whose shape changed without a map is refused."""
    params = dict(model.named_parameters())
    out = {}
    for name, mask in masks.items():
        if name not in params:
            continue
        p = params[name]
        maps = (index_maps or {}).get(name, {})
        if not maps:
            if mask.shape != p.shape:
                raise ConfigError(f"method=dsd: a surgery changed {name!r} from {tuple(mask.shape)} to "
                                  f"{tuple(p.shape)} without an index map; its pruning mask cannot follow")
            out[name] = mask
            continue
        pruned = (~mask).to(torch.float32)
        for dim, index in sorted(maps.items()):
            idx = torch.tensor(index, dtype=torch.long, device=mask.device)
            picked = pruned.index_select(dim, idx.clamp(min=0))
            shape = [1] * picked.dim()
            shape[dim] = len(index)
            pruned = picked * (idx >= 0).view(shape).to(picked.dtype)  # a new entry is not pruned
        out[name] = (pruned == 0).to(p.device)
    return out


def dsd_phases(epochs: int, dense_epochs: int = 0, sparse_epochs: int = 0) -> tuple[int, int, int]:
    """Epochs of the (dense, sparse, re-dense) phases of a run of ``epochs`` epochs; 0 means a third of the run
    (the first two phases get ``epochs // 3`` each, the re-dense phase the rest). Every phase needs an epoch."""
    third = epochs // 3
    dense = dense_epochs or third
    sparse = sparse_epochs or third
    redense = epochs - dense - sparse
    if min(dense, sparse, redense) < 1:
        raise ConfigError(f"method=dsd with dsd.phases=epochs needs at least one epoch per phase: epochs={epochs} "
                          f"gives dense {dense}, sparse {sparse}, re-dense {redense} (set epochs >= 3, or "
                          f"dsd.dense_epochs / dsd.sparse_epochs)")
    return dense, sparse, redense


# -- the method --------------------------------------------------------------------------------------------------------
@dataclass
class DSDOptions:
    sparsity: float = option(0.3, "fraction of every layer's weights pruned in the sparse phase (KE paper: 30%)",
                             min=0.0, max=1.0)
    phases: str = option("epochs", "phases as epochs within one run, or as the trainer's 3 generations",
                         choices=("epochs", "generations"))
    dense_epochs: int = option(0, "phases=epochs: epochs of the first dense phase (0: a third of the run)", min=0)
    sparse_epochs: int = option(0, "phases=epochs: epochs of the sparse phase (0: a third of the run)", min=0)
    redense_lr: float = option(0.1, "learning-rate factor of the re-dense phase (DSD paper: 1/10)", min=0.0,
                               max=1.0, min_exclusive=True)
    member: str = option("model", "the member trained dense-sparse-dense")


PHASES = ("dense", "sparse", "redense")


class MaskedTraining:
    """Event handlers of a method that holds ``self.masks`` (parameter name -> kept entries) of the member
    ``self.options.member``: masked gradients after every backward, masked weights after every step (DSD's sparse
    phase, RePr's sub-network)."""

    masks: dict[str, torch.Tensor]

    def on_after_backward(self, trainer) -> None:
        if self.masks and trainer.updates(self.options.member):
            mask_gradients(trainer.members[self.options.member].model, self.masks)

    def on_after_step(self, trainer) -> None:
        if self.masks and trainer.updates(self.options.member):
            apply_masks(trainer.members[self.options.member].model, self.masks)


class DenseSparseDense(MaskedTraining, Method):
    """``method=dsd``: dense, then sparse (per-layer magnitude pruning, mask after every step), then dense again at
    ``dsd.redense_lr`` times the learning rate with the pruned weights restarting at zero."""

    name = "dsd"
    Options = DSDOptions

    def __init__(self, options=None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        if not self.options.sparsity < 1:
            raise ConfigError(f"bad value for dsd.sparsity: {self.options.sparsity} (must be below 1)")
        self.masks: dict[str, torch.Tensor] = {}  # True = kept; empty outside the sparse phase
        self.pruned = False  # the sparse phase has begun (its masks were drawn)

    def setup(self, trainer) -> None:
        opts, cfg = self.options, trainer.config
        if opts.member not in trainer.members:
            raise ConfigError(f"dsd.member={opts.member!r} is not a member of this run ({', '.join(trainer.members)})")
        if opts.phases == "generations":
            if cfg.generations != 3:
                raise ConfigError(f"dsd.phases=generations needs generations=3 (dense, sparse, re-dense); "
                                  f"got generations={cfg.generations}")
            if opts.dense_epochs or opts.sparse_epochs:
                raise ConfigError("dsd.dense_epochs / dsd.sparse_epochs apply to dsd.phases=epochs only")
        else:
            if cfg.generations != 1:
                raise ConfigError(f"dsd.phases=epochs runs its three phases in one generation; got "
                                  f"generations={cfg.generations} (use generations=1, or dsd.phases=generations "
                                  f"with generations=3)")
            self.plan = dsd_phases(cfg.epochs, opts.dense_epochs, opts.sparse_epochs)
        if not prunable_weights(trainer.members[opts.member].model):
            raise ConfigError(f"method=dsd: member {opts.member!r} has no weight with two or more dimensions to prune")
        trainer.rates.modify(opts.member, self.redense_rate)

    def phase(self, trainer) -> str:
        """The phase of the current epoch: ``dense``, ``sparse`` or ``redense``."""
        if self.options.phases == "generations":
            return PHASES[min(trainer.generation, 2)]
        dense, sparse, _ = self.plan
        e = trainer.epoch
        return "dense" if e < dense else "sparse" if e < dense + sparse else "redense"

    # -- events -----------------------------------------------------------------------------------------------------
    def on_epoch_start(self, trainer) -> None:
        member = trainer.members[self.options.member]
        phase = self.phase(trainer)
        if phase == "sparse" and not self.pruned:
            self.masks = magnitude_masks(member.model, self.options.sparsity)
            self.pruned = True
            apply_masks(member.model, self.masks)
            mask_optimizer_state(member.optimizer, member.model, self.masks)
        elif phase == "redense":
            # the pruned weights are zero (the mask held them there): they restart from that value
            self.masks = {}

    def redense_rate(self, member, position, lr: float) -> float:
        """The base-rate modifier (:mod:`resprout.engine.rates`): ``dsd.redense_lr`` times the member's rate in
        the re-dense phase (DSD paper Sec. 2: the re-dense phase trains at a lower rate)."""
        return lr * self.options.redense_lr if self.phase(position) == "redense" else lr

    def on_member_resized(self, trainer) -> None:
        if trainer.resized != self.options.member or trainer.replaying:
            return  # on a replay the masks of the final shapes are loaded with the method state afterwards
        model = trainer.members[self.options.member].model
        if self.masks:
            self.masks = carry_masks(self.masks, model, trainer.resized_maps)
            apply_masks(model, self.masks)

    def on_generation_end(self, trainer) -> None:
        model = trainer.members[self.options.member].model
        weights = prunable_weights(model)
        zeros = sum(int((p == 0).sum()) for p in weights.values())
        total = sum(p.numel() for p in weights.values())
        trainer.log_generation(self.options.member, {"dsd_zero_fraction": zeros / max(total, 1)}, in_results=False)

    # -- state ------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"masks": dict(self.masks), "pruned": self.pruned}

    def load_state_dict(self, state: dict) -> None:
        self.masks = dict(state.get("masks", {}))
        self.pruned = bool(state.get("pruned", False))
