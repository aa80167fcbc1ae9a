"""RePr (Prakash, Storer, Florencio and Zhang, "RePr: Improved Training of Convolutional Filters", CVPR 2019).

Training alternates between the full network and a sub-network without its most redundant filters (Algorithm 1):

1. train the full network for ``S1`` epochs;
2. rank every convolutional filter by its *inter-filter orthogonality* (Sec. 4, Eq. 2-3): per layer ``l`` with
   ``J`` filters flattened to rows and normalized to unit length, ``W_hat``, ::

       P_l = | W_hat W_hat^T - I |          O_l^f = sum_j P_l[f, j] / J

   a filter that overlaps much with the others of its layer has a large ``O``. The ranking is over the whole
   network, not per layer (Sec. 4; the Knowledge Evolution paper, Sec. 4.1, stresses this difference);
3. drop the ``p`` most redundant fraction of filters (``p = 30%``) and train the sub-network for ``S2`` epochs;
4. restore the dropped filters, re-initialized orthogonally to the filters kept in their layer and to their own
   values before they were dropped (Sec. 4, "null space of the QR decomposition"), and train on; repeat.

Paper defaults: ``p = 0.3``; the RePr paper repeats the cycle ``N = 3`` times; the KE paper's re-run (Sec. 4.1,
200 epochs) uses ``S1 = 50`` and ``S2 = 10`` epochs, i.e. ``S1 = E/4``, ``S2 = E/20``, which ``repr.s1=0
repr.s2=0`` scale to a run of ``E`` epochs (at least one epoch each; as many cycles, up to ``repr.cycles``, as
fit before a final full phase).

Choices the papers leave open (documented here, each an option or a plain rule):

* **Drop by masks, not resize surgery.** A dropped filter's weights (and bias) and the scale and shift of the
  batch norm right after it are zero, so the channel is exactly 0, as if the filter were removed. The mask acts on
  the weights after every step, on their gradients and on the optimizer's per-weight state, so a dropped filter
  stays exactly zero through the sub-network phase whatever the momentum or weight decay.
* **Re-initialization.** A random Gaussian matrix is projected on the null space of the kept filters and the old
  values (an SVD, the numerically safe form of the paper's QR), orthonormalized, and scaled to the mean norm of the
  kept filters of the layer. When the layer has too few weights per filter for that null space (a first conv with
  9 weights per filter and 16 filters), the orthogonality to the old values is given up first, then the
  orthogonality to the kept filters (the directions left are random); :func:`orthogonal_reinit` says how far it
  got. The restored batch-norm channels start at scale 1, shift 0 and fresh running statistics.
* **Layers.** Every ``Conv1d/2d/3d`` with ``groups == 1`` is ranked; grouped and depthwise convolutions (whose
  filters do not share an input space) are left alone, and at least one filter of every layer is kept.
* **Cycles** (``repr.schedule``): ``epochs``, cycles of ``S1 + S2`` epochs within one generation, then a final full
  phase; or ``generations``, one cycle per generation of the trainer (the last ``S2`` epochs of a generation train
  the sub-network, the filters are restored at the next generation's start, and the last generation trains the
  full network). ``auto`` picks ``generations`` when the run has more than one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from resprout.config import option
from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.dsd import MaskedTraining, apply_masks, mask_optimizer_state
from resprout.seeding import derive_seed

__all__ = ["RePr", "RePrOptions", "drop_masks", "filter_orthogonality", "orthogonal_reinit", "rank_filters",
           "ranked_convs", "repr_plan"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


# -- pure functions ----------------------------------------------------------------------------------------------------
def ranked_convs(model: nn.Module) -> dict[str, nn.Module]:
    """The convolutions RePr ranks: ``Conv1d/2d/3d`` with ``groups == 1`` and more than one filter."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, _CONVS) and m.groups == 1 and m.out_channels > 1}


@torch.no_grad()
def filter_orthogonality(weight: torch.Tensor) -> torch.Tensor:
    """RePr's inter-filter orthogonality of one layer (Prakash et al. 2019, Eq. 2-3): with ``W_hat`` the filters as
    unit rows, ``O^f = sum_j |W_hat W_hat^T - I|[f, j] / J``. Larger means more redundant."""
    w = weight.detach().flatten(1).double()
    w_hat = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    p = (w_hat @ w_hat.T - torch.eye(len(w), dtype=w.dtype, device=w.device)).abs()
    return p.sum(dim=1) / len(w)


@torch.no_grad()
def rank_filters(model: nn.Module, prune_rate: float, ranking: str = "global") -> dict[str, list[int]]:
    """The filters to drop: the ``prune_rate`` fraction with the largest orthogonality score, over the whole network
    (``global``, the paper) or within each layer (``layer``); at least one filter of every layer is kept.
    Returns ``{conv path: sorted filter indices}``."""
    convs = ranked_convs(model)
    if not convs:
        raise ConfigError("method=repr needs convolutional filters to rank; this network has no convolution "
                          "(groups=1) with more than one filter")
    scores = {n: filter_orthogonality(m.weight) for n, m in convs.items()}
    dropped: dict[str, list[int]] = {n: [] for n in convs}
    if ranking == "layer":
        for n, s in scores.items():
            k = min(round(prune_rate * len(s)), len(s) - 1)
            dropped[n] = sorted(torch.argsort(s, descending=True, stable=True)[:k].tolist())
        return {n: d for n, d in dropped.items() if d}
    entries = sorted(((float(v), n, f) for n, s in scores.items() for f, v in enumerate(s.tolist())),
                     key=lambda t: (-t[0], t[1], t[2]))
    budget = round(prune_rate * len(entries))
    for _, n, f in entries:
        if budget == 0:
            break
        if len(dropped[n]) < len(scores[n]) - 1:
            dropped[n].append(f)
            budget -= 1
    return {n: sorted(d) for n, d in dropped.items() if d}


def _following_norms(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, str]:
    """Conv path -> path of the batch norm that reads its output directly (traced, not guessed from names)."""
    from resprout.surgery.channels import example_input, model_device
    from resprout.surgery.graph import trace

    graph = trace(model, example_input(input_shape, device=model_device(model)), strict=False)
    consumers = graph.consumers()
    out = {}
    for op in graph.layer_ops(("conv",)):
        for c in consumers.get(op.output, []):
            module = graph.modules.get(c.module) if c.module else None
            if c.kind == "norm" and isinstance(module, nn.modules.batchnorm._BatchNorm) and op.module not in out:
                out[op.module] = c.module
    return out


def drop_masks(model: nn.Module, dropped: dict[str, list[int]], norms: dict[str, str]) -> dict[str, torch.Tensor]:
    """Boolean masks (True = kept) that zero the dropped filters: their conv weight rows and bias entries, and the
    scale and shift of the batch norm right after the conv, so the channel is exactly zero."""
    masks = {}
    params = dict(model.named_parameters())
    for conv, filters in dropped.items():
        names = [f"{conv}.weight", f"{conv}.bias"]
        if conv in norms:
            names += [f"{norms[conv]}.weight", f"{norms[conv]}.bias"]
        for name in names:
            if name in params:
                mask = torch.ones(params[name].shape, dtype=torch.bool, device=params[name].device)
                mask[filters] = False
                masks[name] = mask
    return masks


@torch.no_grad()
def orthogonal_reinit(kept: torch.Tensor, old: torch.Tensor, generator: torch.Generator,
                      scale: float | None = None) -> tuple[torch.Tensor, str]:
    """New values for ``len(old)`` dropped filters (rows), orthogonal to the ``kept`` filters of the layer and to
    their own ``old`` values (Prakash et al. 2019, Sec. 4), mutually orthonormal, then scaled to ``scale`` (default:
    the mean norm of the kept filters).

    Returns ``(filters, "kept+old" | "kept" | "partial")``: what they are orthogonal to. A null space too small for
    every new filter drops the orthogonality to the old values first, then to the kept filters."""
    shape = old.shape
    k, d = len(old), old[0].numel()
    kept2, old2 = kept.flatten(1).double(), old.flatten(1).double()
    if scale is None:
        norms = kept2.norm(dim=1)
        scale = float(norms.mean()) if len(norms) and float(norms.mean()) > 0 else 1.0
    draw = torch.randn(d, k, generator=generator, dtype=torch.float64)

    def null_space(rows: torch.Tensor) -> torch.Tensor:
        if len(rows) == 0:
            return torch.eye(d, dtype=torch.float64)
        _, s, vh = torch.linalg.svd(rows, full_matrices=True)
        rank = int((s > s.max() * max(rows.shape) * torch.finfo(torch.float64).eps).sum()) if len(s) else 0
        return vh[rank:].T  # d x (d - rank): orthonormal columns orthogonal to every row

    for against, label in ((torch.cat([kept2, old2]), "kept+old"), (kept2, "kept")):
        basis = null_space(against)
        if basis.shape[1] >= k:
            q, _ = torch.linalg.qr(basis @ (basis.T @ draw))
            return (q.T * scale).to(old.dtype).view(shape), label
    # too few directions even outside the kept filters: use those there are, the rest stays random
    basis = null_space(kept2)
    free = basis.shape[1]
    out = draw.T.clone()
    if free:
        q, _ = torch.linalg.qr(basis @ (basis.T @ draw[:, :free]))
        out[:free] = q.T
    out = out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (out * scale).to(old.dtype).view(shape), "partial"


def repr_plan(epochs: int, s1: int = 0, s2: int = 0, cycles: int = 3) -> list[tuple[int, int]]:
    """``schedule=epochs``: the (drop epoch, restore epoch) of every cycle in a run of ``epochs`` epochs. ``s1``
    full epochs, then ``s2`` sub-network epochs, repeated up to ``cycles`` times while a full epoch remains after
    the last restore; 0 scales the KE paper's S1=50 / S2=10 of 200 epochs (at least one epoch each)."""
    s1 = s1 or max(1, epochs // 4)
    s2 = s2 or max(1, epochs // 20)
    plan = []
    for c in range(cycles):
        drop = c * (s1 + s2) + s1
        if drop + s2 >= epochs:
            break
        plan.append((drop, drop + s2))
    if not plan:
        raise ConfigError(f"method=repr with repr.schedule=epochs: epochs={epochs} leaves no room for one cycle of "
                          f"{s1} full + {s2} sub-network epochs followed by a full epoch (set more epochs, or "
                          f"repr.s1 / repr.s2)")
    return plan


# -- the method --------------------------------------------------------------------------------------------------------
@dataclass
class RePrOptions:
    prune_rate: float = option(0.3, "p: fraction of filters dropped in each cycle (paper: 30%)", min=0.0, max=1.0,
                               min_exclusive=True)
    s1: int = option(0, "S1: full-network epochs of a cycle, schedule=epochs (0: a quarter of the run, as KE's 50 "
                     "of 200); with generations a cycle is the generation's epochs before its last S2", min=0)
    s2: int = option(0, "S2: sub-network epochs of a cycle (0: epochs/20, at least 1; generations: a third)",
                     min=0)
    cycles: int = option(3, "schedule=epochs: most cycles in the run (paper: 3)", min=1)
    schedule: str = option("auto", "cycles as epochs within one generation, or one per generation (auto: "
                           "generations when the run has more than one)", choices=("auto", "epochs", "generations"))
    ranking: str = option("global", "rank filters over the whole network (paper) or within each layer",
                          choices=("global", "layer"))
    member: str = option("model", "the member trained with RePr")


class RePr(MaskedTraining, Method):
    """``method=repr``: full network, drop the most redundant filters, train the sub-network, restore them
    orthogonally, train on (Prakash et al., CVPR 2019, Algorithm 1)."""

    name = "repr"
    Options = RePrOptions

    def __init__(self, options=None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self.dropped: dict[str, list[int]] = {}  # conv path -> dropped filters (empty between sub-network phases)
        self.old: dict[str, torch.Tensor] = {}  # conv path -> the dropped filters' weights before the drop
        self.masks: dict[str, torch.Tensor] = {}
        self.cycle = 0  # cycles completed (restores done)
        self.history: list[dict] = []  # one record per cycle: what was dropped, what the restore reached

    def setup(self, trainer) -> None:
        opts, cfg = self.options, trainer.config
        if opts.member not in trainer.members:
            raise ConfigError(f"repr.member={opts.member!r} is not a member of this run ({', '.join(trainer.members)})")
        model = trainer.members[opts.member].model
        if not ranked_convs(model):
            raise ConfigError(f"method=repr needs a convolutional network; {type(model).__name__} has no "
                              f"convolution (groups=1) with more than one filter to rank")
        self.mode = opts.schedule if opts.schedule != "auto" else ("generations" if cfg.generations > 1 else "epochs")
        if self.mode == "generations":
            if cfg.generations < 2:
                raise ConfigError("repr.schedule=generations needs generations >= 2 (the last one trains the full "
                                  "network after the final restore)")
            self.s2 = opts.s2 or max(1, round(cfg.epochs / 3))
            if self.s2 >= cfg.epochs:
                raise ConfigError(f"repr.s2={self.s2} leaves no full-network epoch in a generation of "
                                  f"{cfg.epochs} epochs (set repr.s2 below epochs)")
        else:
            if cfg.generations != 1:
                raise ConfigError(f"repr.schedule=epochs runs its cycles in one generation; got "
                                  f"generations={cfg.generations}")
            self.plan = repr_plan(cfg.epochs, opts.s1, opts.s2, opts.cycles)
        self.input_shape = trainer.input_shape

    def on_fit_start(self, trainer) -> None:
        # after every setup (another method may have changed the network): which BN follows which conv
        self.norms = _following_norms(trainer.members[self.options.member].model, self.input_shape)

    def on_member_resized(self, trainer) -> None:
        if trainer.resized == self.options.member:
            if self.dropped and not trainer.replaying:
                raise ConfigError("method=repr: a surgery changed the network during a sub-network phase; RePr's "
                                  "dropped filters cannot follow it")
            self.norms = _following_norms(trainer.members[self.options.member].model, self.input_shape)

    # -- when -------------------------------------------------------------------------------------------------------
    def _drop_due(self, trainer) -> bool:
        g, e, cfg = trainer.generation, trainer.epoch, trainer.config
        if self.mode == "generations":
            return g < cfg.generations - 1 and e == cfg.epochs - self.s2
        return any(e == drop for drop, _ in self.plan)

    def _restore_due(self, trainer) -> bool:
        if not self.dropped:
            return False
        if self.mode == "generations":
            return trainer.epoch == 0  # the generation after a sub-network phase
        return any(trainer.epoch == restore for _, restore in self.plan)

    def on_generation_start(self, trainer) -> None:
        if self._restore_due(trainer):  # before the trainer builds the generation's optimizer
            self.restore(trainer)

    def on_epoch_start(self, trainer) -> None:
        if self._restore_due(trainer):
            self.restore(trainer)
        if self._drop_due(trainer):
            self.drop(trainer)

    # -- what -------------------------------------------------------------------------------------------------------
    def drop(self, trainer) -> None:
        member = trainer.members[self.options.member]
        model = member.model
        self.dropped = rank_filters(model, self.options.prune_rate, self.options.ranking)
        self.old = {n: model.get_submodule(n).weight.detach()[f].clone() for n, f in self.dropped.items()}
        self.masks = drop_masks(model, self.dropped, self.norms)
        apply_masks(model, self.masks)
        mask_optimizer_state(member.optimizer, model, self.masks)
        total = sum(m.out_channels for m in ranked_convs(model).values())
        self.history.append({"generation": trainer.generation + 1, "drop_epoch": trainer.epoch + 1,
                             "dropped": sum(map(len, self.dropped.values())), "of": total,
                             "per_layer": {n: len(f) for n, f in self.dropped.items()}})

    @torch.no_grad()
    def restore(self, trainer) -> None:
        member = trainer.members[self.options.member]
        model = member.model
        outcome = {}
        for i, (conv_path, filters) in enumerate(sorted(self.dropped.items())):
            conv = model.get_submodule(conv_path)
            keep = [f for f in range(conv.out_channels) if f not in set(filters)]
            gen = torch.Generator().manual_seed(derive_seed(trainer.config.seed, 0x7E9, self.cycle, i))
            new, outcome[conv_path] = orthogonal_reinit(conv.weight[keep], self.old[conv_path].to(conv.weight), gen)
            conv.weight[filters] = new.to(conv.weight.device)
            if conv.bias is not None:
                conv.bias[filters] = 0.0
            if conv_path in self.norms:
                bn = model.get_submodule(self.norms[conv_path])
                for t, v in ((bn.weight, 1.0), (bn.bias, 0.0), (bn.running_mean, 0.0), (bn.running_var, 1.0)):
                    if t is not None:
                        t[filters] = v
        if self.history:
            self.history[-1].update({"restore_generation": trainer.generation + 1, "restore_epoch": trainer.epoch + 1,
                                     "orthogonal_to": outcome})
        self.dropped, self.old, self.masks = {}, {}, {}
        self.cycle += 1

    def on_generation_end(self, trainer) -> None:
        # logged here, not at the drop: a resumed run re-logs its generation from the method state
        g = trainer.generation + 1
        drops = [h for h in self.history if h["generation"] == g]
        trainer.log_generation(self.options.member, {
            "repr_dropped_fraction": drops[-1]["dropped"] / drops[-1]["of"] if drops else 0.0,
            "repr_cycles_done": self.cycle})
        trainer.results["repr"] = {"cycles": self.history}


    # -- state ------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"dropped": {n: list(f) for n, f in self.dropped.items()}, "old": dict(self.old),
                "masks": dict(self.masks), "cycle": self.cycle, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.dropped = {n: list(f) for n, f in state.get("dropped", {}).items()}
        self.old = dict(state.get("old", {}))
        self.masks = dict(state.get("masks", {}))
        self.cycle = int(state.get("cycle", 0))
        self.history = list(state.get("history", []))
