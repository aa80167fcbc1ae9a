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
   values before they were dropped (Sec. 4, "null space of the QR decomposition"), and train on; repeat ``N``
   times, then train the full network to the end.

Paper defaults: ``p = 0.3``, ``N = 3``, ``S1 = 20`` and ``S2 = 10`` epochs (no copy of the paper is at hand here:
these are the numbers as remembered, and Algorithm 1's last full phase is taken to be ``S1`` long, so the paper's
run is ``3 (20 + 10) + 20 = 110`` epochs). :func:`repr_plan` scales those proportions to a run of ``E`` epochs;
``repr.scale=ke-paper`` scales the Knowledge Evolution paper's re-run instead (Sec. 4.1: ``S1 = 50``, ``S2 = 10`` of
200 epochs).

Choices the paper leaves open (documented here, each an option or a plain rule):

* **Which layers are ranked.** Every ``Conv1d/2d/3d`` with ``groups == 1`` (grouped and depthwise convolutions,
  whose filters do not share an input space, are left alone) except, by default, the *stem* (a conv that reads the
  image) and the *projection shortcuts* (a conv alone on one branch of a residual add whose other branch runs
  through more convs from the same input). Both are found in the traced channel graph, not from module names
  (:func:`conv_roles`). They have more filters than weights per filter (the 16 filters of a 3x3 stem on one
  channel live in 9 dimensions), so they can never be orthogonal: by the Welch bound the RMS cosine of 16 unit
  vectors in 9 dimensions is at least ``sqrt((16 - 9) / (9 * 15)) = 0.23``, and the global ranking drops 15 of the
  16 stem filters of a fresh ResNet-20 on one-channel images. The RePr author excludes the first layer;
  ``repr.include_stem`` and ``repr.include_shortcuts`` rank them again. At least one filter of every layer is kept.
* **Drop by masks, not resize surgery.** A dropped filter's weights (and bias) and the scale and shift of the
  batch norm right after it are zero, so the channel is exactly 0, as if the filter were removed. The mask acts on
  the weights after every step, on their gradients and on the optimizer's per-weight state, so a dropped filter
  stays exactly zero through the sub-network phase whatever the momentum or weight decay.
* **Re-initialization.** A random Gaussian matrix is projected on the null space of the kept filters and the old
  values (an SVD, the numerically safe form of the paper's QR), orthonormalized, and scaled to the mean norm of the
  kept filters of the layer. When the layer has too few weights per filter for that null space, the orthogonality
  to the old values is given up first, then the orthogonality to the kept filters (the directions left are
  random); :func:`orthogonal_reinit` says how far it got. The restored batch-norm channels start at scale 1,
  shift 0 and fresh running statistics.
* **Cycles** (``repr.schedule``): ``epochs``, cycles of ``S1 + S2`` epochs within one generation, then a final full
  phase; or ``generations``, one cycle per generation of the trainer (the last ``S2`` epochs of a generation train
  the sub-network, the filters are restored at the next generation's start, and the last generation trains the
  full network). ``auto`` picks ``generations`` when the run has more than one.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import nn

from resprout.config import option
from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.dsd import MaskedTraining, apply_masks, mask_optimizer_state
from resprout.seeding import derive_seed
from resprout.surgery.graph import ChannelGraph

__all__ = ["PAPER_PHASES", "RePr", "RePrOptions", "conv_roles", "drop_masks", "excluded_convs",
           "filter_orthogonality", "generation_s2", "orthogonal_reinit", "rank_filters", "ranked_convs",
           "repr_plan", "scaled_phases"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ADDS = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__"})  # a residual sum
_LAYERS = ("conv", "linear")


# -- which convolutions are ranked -------------------------------------------------------------------------------------
def ranked_convs(model: nn.Module, exclude: Collection[str] = ()) -> dict[str, nn.Module]:
    """The convolutions RePr ranks: ``Conv1d/2d/3d`` with ``groups == 1`` and more than one filter, except the
    module paths in ``exclude`` (see :func:`excluded_convs`)."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, _CONVS) and m.groups == 1 and m.out_channels > 1 and n not in exclude}


def _is_layer(op) -> bool:
    """A conv or linear call, including one whose weight is computed in the forward (traced as opaque)."""
    return op.kind in _LAYERS or (op.kind == "opaque" and "computed_weight" in op.info)


def _layer_depths(graph: ChannelGraph, source: int, avoid: int) -> dict[int, int]:
    """Node -> the most conv/linear calls on a path from node ``source`` to it that does not pass through op
    ``avoid`` (nodes not reached are absent). Ops are recorded in execution order, so one pass in that order sees
    every input before its output."""
    depth = {source: 0}
    for op in graph.ops:
        seen = [depth[i] for i in op.inputs if i in depth] if op.index != avoid else []
        if seen:
            depth[op.output] = max(seen) + (1 if _is_layer(op) else 0)
    return depth


def _writing_conv(graph: ChannelGraph, node: int):
    """The conv op that writes ``node`` through calls with one traced input each (its BN, an activation), or
    None when another kind of call comes first."""
    while True:
        producer = graph.nodes[node].producer
        if producer is None:
            return None
        op = graph.ops[producer]
        if op.kind == "conv":
            return op
        if op.kind not in ("norm", "elementwise") or len(set(op.inputs)) != 1:
            return None
        node = op.inputs[0]


def conv_roles(graph: ChannelGraph) -> dict[str, list]:
    """The stem and the projection shortcuts of a traced network (:func:`resprout.surgery.graph.trace`), from how
    the feature maps flow, whatever the modules are called.

    * ``stem``: a conv whose input is the model's input, up to calls that are not conv or linear layers
      (a normalization, a pad, a reshape);
    * ``shortcut``: a conv alone (up to its BN and activations) on one operand of a residual add, whose input also
      reaches another operand of that add, without passing through that conv, through at least two conv/linear
      layers (the block's main branch). The last conv of a main branch, or of the block before an identity
      shortcut, is not one: its input reaches the other operand only through itself, or not at all;
    * ``ambiguous``: ``(context, [conv, ...])`` for an add whose operands each run through exactly one conv from
      the same input: either could be the shortcut, and the graph cannot tell which.

    Returns ``{"stem": [paths], "shortcut": [paths], "ambiguous": [...], "traced": [every conv path called]}``;
    a module called at several places has every role one of its calls has."""
    stem: set[str] = set()
    image = set(graph.inputs)  # feature maps that are still the image, up to calls that are not layers
    for op in graph.ops:
        if not any(i in image for i in op.inputs):
            continue
        if op.kind == "conv":
            stem.add(op.module)
        elif not _is_layer(op):
            image.add(op.output)
    shortcut: set[str] = set()
    ambiguous: list[tuple[str, list[str]]] = []
    depths: dict[tuple[int, int], dict[int, int]] = {}
    for op in graph.ops:
        operands = list(dict.fromkeys(op.inputs))
        if op.kind != "elementwise" or op.name not in _ADDS or len(operands) < 2:
            continue
        tied = []
        for y in operands:
            conv = _writing_conv(graph, y)
            if conv is None or not conv.inputs:
                continue
            key = (conv.inputs[0], conv.index)
            if key not in depths:
                depths[key] = _layer_depths(graph, *key)
            others = [depths[key].get(z) for z in operands if z != y]
            if any(d is not None and d >= 2 for d in others):
                shortcut.add(conv.module)
            elif any(d == 1 for d in others):
                tied.append(conv.module)
        if tied:
            ambiguous.append((op.context or "the model", sorted(set(tied))))
    traced = sorted({op.module for op in graph.ops if op.kind == "conv"})
    return {"stem": sorted(stem), "shortcut": sorted(shortcut), "ambiguous": ambiguous, "traced": traced}


def excluded_convs(model: nn.Module, graph: ChannelGraph, *, include_stem: bool = False,
                   include_shortcuts: bool = False) -> dict[str, str]:
    """``{conv path: "stem" | "projection shortcut"}``: the convolutions of ``model`` (traced as ``graph``) that
    RePr leaves out of the ranking unless included. Refuses (:class:`ConfigError`, one line) when the graph cannot
    tell: a ranked conv that did not run in the trace, or a residual add whose two branches each hold one conv."""
    if include_stem and include_shortcuts:
        return {}
    roles = conv_roles(graph)
    hint = "set repr.include_stem=true repr.include_shortcuts=true to rank every convolution"
    missing = [n for n in ranked_convs(model) if n not in set(roles["traced"])]
    if missing:
        raise ConfigError(f"method=repr: convolution '{missing[0]}' did not run on an example input, so the traced "
                          f"graph cannot tell whether it is the stem or a projection shortcut ({hint})")
    if roles["ambiguous"] and not include_shortcuts:
        where, convs = roles["ambiguous"][0]
        raise ConfigError(f"method=repr: a residual add in {where} sums branches that each hold one convolution "
                          f"({', '.join(repr(c) for c in convs)}); the graph cannot tell which is the projection "
                          f"shortcut (set repr.include_shortcuts=true to rank them all)")
    out = {}
    if not include_shortcuts:
        out.update({n: "projection shortcut" for n in roles["shortcut"]})
    if not include_stem:
        out.update({n: "stem" for n in roles["stem"]})
    ranked = ranked_convs(model)
    return {n: why for n, why in sorted(out.items()) if n in ranked}


@torch.no_grad()
def filter_orthogonality(weight: torch.Tensor) -> torch.Tensor:
    """RePr's inter-filter orthogonality of one layer (Prakash et al. 2019, Eq. 2-3): with ``W_hat`` the filters as
    unit rows, ``O^f = sum_j |W_hat W_hat^T - I|[f, j] / J``. Larger means more redundant."""
    w = weight.detach().flatten(1).double()
    w_hat = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    p = (w_hat @ w_hat.T - torch.eye(len(w), dtype=w.dtype, device=w.device)).abs()
    return p.sum(dim=1) / len(w)


@torch.no_grad()
def rank_filters(model: nn.Module, prune_rate: float, ranking: str = "global",
                 exclude: Collection[str] = ()) -> dict[str, list[int]]:
    """The filters to drop: the ``prune_rate`` fraction with the largest orthogonality score, over the whole network
    (``global``, the paper) or within each layer (``layer``), among the convolutions of :func:`ranked_convs` (those
    in ``exclude`` are neither ranked nor counted); at least one filter of every layer is kept.
    Returns ``{conv path: sorted filter indices}``."""
    convs = ranked_convs(model, exclude)
    if not convs:
        raise ConfigError("method=repr needs convolutional filters to rank; this network has no convolution "
                          "(groups=1) with more than one filter" + (" besides the stem and projection shortcuts "
                                                                    "it leaves out" if exclude else ""))
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


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> ChannelGraph:
    from resprout.surgery.channels import example_input, model_device
    from resprout.surgery.graph import trace

    return trace(model, example_input(input_shape, device=model_device(model)), strict=False)


def following_norms(graph: ChannelGraph) -> dict[str, str]:
    """Conv path -> path of the batch norm that reads its output directly (traced, not guessed from names)."""
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


#: the runs the default phase lengths scale to ``E`` epochs: (S1, S2, last full phase) in epochs, for N cycles
#: the run is ``N (S1 + S2) + last`` epochs. ``repr-paper``: Prakash et al. (S1 = 20, S2 = 10; the last phase taken
#: as S1, 110 epochs for N = 3); ``ke-paper``: the Knowledge Evolution paper's re-run (Sec. 4.1, 200 epochs).
PAPER_PHASES = {"repr-paper": (20, 10, 20), "ke-paper": (50, 10, 20)}


def _round(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded to the nearest integer, halves up (exact integer arithmetic)."""
    return (2 * numerator + denominator) // (2 * denominator)


def scaled_phases(epochs: int, cycles: int = 3, scale: str = "repr-paper") -> tuple[int, int]:
    """(S1, S2) for a run of ``epochs`` epochs: the paper's phase lengths times ``epochs / (N (S1 + S2) + last)``,
    rounded to the nearest epoch, at least one each (see :data:`PAPER_PHASES`)."""
    s1, s2, last = PAPER_PHASES[scale]
    total = cycles * (s1 + s2) + last
    return max(1, _round(epochs * s1, total)), max(1, _round(epochs * s2, total))


def generation_s2(epochs: int, scale: str = "repr-paper") -> int:
    """``schedule=generations``: the sub-network epochs at the end of a generation of ``epochs`` epochs, the
    paper's share of a cycle ``S2 / (S1 + S2)`` (a third for RePr's 20 + 10), rounded, at least one."""
    s1, s2, _ = PAPER_PHASES[scale]
    return max(1, _round(epochs * s2, s1 + s2))


def repr_plan(epochs: int, s1: int = 0, s2: int = 0, cycles: int = 3,
              scale: str = "repr-paper") -> list[tuple[int, int]]:
    """``schedule=epochs``: the (drop epoch, restore epoch) of every cycle in a run of ``epochs`` epochs (0-based
    epochs: the sub-network trains epochs ``drop .. restore - 1``). ``s1`` full epochs, then ``s2`` sub-network
    epochs, repeated up to ``cycles`` times while at least one full epoch remains after the last restore; a 0
    takes :func:`scaled_phases`. When the epochs are few, phases do not shrink below one epoch: fewer cycles run
    (``len`` of the plan), down to one, and a run without room for one cycle is refused."""
    d1, d2 = scaled_phases(epochs, cycles, scale)
    s1, s2 = s1 or d1, s2 or d2
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
    s1: int = option(0, "S1: full-network epochs of a cycle, schedule=epochs (0: the paper's 20 of 110 epochs "
                     "scaled to the run, see repr.scale)", min=0)
    s2: int = option(0, "S2: sub-network epochs of a cycle (0: the paper's 10 of 110 scaled to the run; "
                     "generations: a third of a generation)", min=0)
    cycles: int = option(3, "N: most cycles in the run, schedule=epochs (paper: 3; fewer when the epochs are too "
                         "few for N cycles of at least one epoch per phase)", min=1)
    scale: str = option("repr-paper", "the run whose proportions the default S1/S2 keep: repr-paper (S1 20, S2 10, "
                        "110 epochs) or ke-paper (the KE paper's re-run: S1 50, S2 10 of 200)",
                        choices=tuple(PAPER_PHASES))
    schedule: str = option("auto", "cycles as epochs within one generation, or one per generation (auto: "
                           "generations when the run has more than one)", choices=("auto", "epochs", "generations"))
    ranking: str = option("global", "rank filters over the whole network (paper) or within each layer",
                          choices=("global", "layer"))
    include_stem: bool = option(False, "also rank the stem (the conv that reads the image; the RePr author leaves "
                                "the first layer out)")
    include_shortcuts: bool = option(False, "also rank the projection shortcuts (1x1 convs beside a residual "
                                     "branch)")
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
        self.excluded: dict[str, str] = {}  # conv path -> why it is not ranked (stem, projection shortcut)

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
            if opts.s1:
                raise ConfigError("repr.s1 applies to repr.schedule=epochs; with generations a cycle is one "
                                  "generation: its epochs before the last repr.s2 train the full network")
            self.s2 = opts.s2 or generation_s2(cfg.epochs, opts.scale)
            if self.s2 >= cfg.epochs:
                raise ConfigError(f"repr.s2={self.s2} leaves no full-network epoch in a generation of "
                                  f"{cfg.epochs} epochs (set repr.s2 below epochs)")
        else:
            if cfg.generations != 1:
                raise ConfigError(f"repr.schedule=epochs runs its cycles in one generation; got "
                                  f"generations={cfg.generations}")
            self.plan = repr_plan(cfg.epochs, opts.s1, opts.s2, opts.cycles, opts.scale)
        self.input_shape = trainer.input_shape

    def on_fit_start(self, trainer) -> None:
        # after every setup (another method may have changed the network): which BN follows which conv, which
        # convs are the stem and the projection shortcuts; refused here, before the first step, when unclear
        self._read_graph(trainer)

    def on_member_resized(self, trainer) -> None:
        if trainer.resized == self.options.member:
            if self.dropped and not trainer.replaying:
                raise ConfigError("method=repr: a surgery changed the network during a sub-network phase; RePr's "
                                  "dropped filters cannot follow it")
            self._read_graph(trainer)

    def _read_graph(self, trainer) -> None:
        opts = self.options
        model = trainer.members[opts.member].model
        graph = _trace(model, self.input_shape)
        self.norms = following_norms(graph)
        self.excluded = excluded_convs(model, graph, include_stem=opts.include_stem,
                                       include_shortcuts=opts.include_shortcuts)
        if not ranked_convs(model, self.excluded):
            raise ConfigError(f"method=repr: every convolution of {type(model).__name__} is a stem or a projection "
                              f"shortcut, which are not ranked (set repr.include_stem=true or "
                              f"repr.include_shortcuts=true)")

    def schedule_summary(self, trainer) -> dict:
        """What the run's cycles are, for its results: the phase lengths and the cycles planned."""
        if self.mode == "generations":
            return {"mode": "generations", "s2": self.s2, "cycles": trainer.config.generations - 1}
        return {"mode": "epochs", "s1": self.plan[0][0], "s2": self.plan[0][1] - self.plan[0][0],
                "cycles": len(self.plan), "cycles_asked": self.options.cycles,
                "sub_network_epochs": [[d + 1, r] for d, r in self.plan]}

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
        self.dropped = rank_filters(model, self.options.prune_rate, self.options.ranking, self.excluded)
        self.old = {n: model.get_submodule(n).weight.detach()[f].clone() for n, f in self.dropped.items()}
        self.masks = drop_masks(model, self.dropped, self.norms)
        apply_masks(model, self.masks)
        mask_optimizer_state(member.optimizer, model, self.masks)
        total = sum(m.out_channels for m in ranked_convs(model, self.excluded).values())
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
        trainer.results["repr"] = {"cycles": self.history, "schedule": self.schedule_summary(trainer),
                                   "not_ranked": dict(self.excluded)}


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
