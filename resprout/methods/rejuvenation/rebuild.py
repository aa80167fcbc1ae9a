"""Dead neuron rejuvenation (Qiao et al., "Neural Rejuvenation", CVPR 2019, Sec. 3.2) as pure functions.

1. **Resource reallocation**: dead channels are removed; every layer's live width ``w'_i`` is expanded by one shared
   rate, ``w''_i = alpha * w'_i``. :func:`solve_expansion` finds ``alpha`` so that the rebuilt cost (parameters or
   FLOPs, the same counter as the monitor, :func:`~.monitor.layer_costs`) matches a target: the original cost, or a
   fraction of it (compression, Table 4). Widths are whole channels, so after the search a greedy pass adds or
   removes single channels, one layer at a time, until the cost is within 1%. Main-stream groups (residual) are
   expanded by the same rate, never shrunk.
   ``realloc="none"`` (NR-IP) keeps every layer's width: dead channels are re-initialized in place.
   A layer dead whole would get ``alpha * 0`` channels; where every path to the output goes through it (each of
   VGG's layers, :func:`~.monitor.bridges`) that cuts the network (the official code's forward then returns None,
   its notes Q9), so such a layer keeps its width with every channel new, and the rate is solved for the rest.
2. **Parameter reinitialization** (:func:`rejuvenation_plan` for the engine's ``resize`` surgery, then
   :func:`reinit_split`): survivors (S) come first, rejuvenated channels (R) after them. ``W_S->S`` is kept,
   ``W_R->R`` re-initialized (He, fan-out), ``W_R->S`` and ``W_S->R`` zero, R's BN scale reset to ``gamma_0``, its
   shift and statistics to 0 / 1. The image feeds S and R alike (the official code feeds it twice), so ``W_image->R``
   is drawn fresh; the classifier's R columns start at zero, so the network computes what it computed before.
3. **Neural rescaling** (:func:`rescale`): ``|gamma'| = max(|gamma|, gamma_0)``, sign kept, ``beta`` scaled alike;
   the layers that read the channel divide its weights by ``s = gamma'/gamma``. Exact through ReLU and pooling (both
   commute with a positive scale), so only channels whose every reader is a plain conv/linear behind such calls are
   rescaled; channels that reach a residual add or any other call are left as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from resprout.methods.rejuvenation.monitor import Counts, Topology, layer_costs

_HOMOGENEOUS = ("relu", "relu_", "max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "dropout",
                "clone", "contiguous", "to", "detach", "float", "identity")


def gamma_score(model: nn.Module, topo: Topology, key: str) -> torch.Tensor:
    """Per channel of a unit, the largest ``|gamma|`` over its writers' BNs (which survivors to keep first)."""
    unit = topo.units[key]
    return torch.stack([model.get_submodule(b).weight.detach().abs().cpu() for b in unit.bns]).amax(0)


def expansion_counts(topo: Topology, live: dict[str, torch.Tensor], alpha: float, *, judged: list[str],
                     realloc: str = "linear", expand_mainstream: bool = True,
                     reinit_dead: Iterable[str] = ()) -> dict[str, tuple[int, int]]:
    """Per unit ``(S, R)``: survivors kept and channels added at expansion rate ``alpha``. A unit of
    ``reinit_dead`` with no survivor keeps its width, every channel new (``alpha * 0`` would cut the network)."""
    out = {}
    for key in topo.order:
        unit = topo.units[key]
        n_live = int(live[key].sum())
        if key not in judged:  # the main stream: all live; grown with the rest, never cut
            total = max(unit.channels, round(alpha * unit.channels)) if expand_mainstream else unit.channels
            out[key] = (unit.channels, total - unit.channels)
            continue
        if n_live == 0 and key in reinit_dead:
            out[key] = (0, unit.channels)
            continue
        total = unit.channels if realloc == "none" else max(1, round(alpha * n_live))
        s = min(n_live, total)
        out[key] = (s, total - s)
    return out


def survivor_order(model: nn.Module, topo: Topology, live: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Per unit, its live channels by decreasing ``|gamma|`` (the ones kept first when fewer are kept)."""
    out = {}
    for key in topo.order:
        alive = torch.nonzero(live[key]).flatten()
        score = gamma_score(model, topo, key)[alive]
        out[key] = alive[torch.argsort(score, descending=True, stable=True)].tolist()
    return out


def unit_labels(s: int, r: int, kept: list[int], prior: list | None, gen: int) -> list | None:
    """Labels of a rebuilt unit: its ``s`` kept channels keep their label (generation 0 when never labelled), its
    ``r`` new ones get generation ``gen``. A unit split for the first time into a single generation (a main stream
    that did not grow, a layer dead whole) stays unlabelled (None): it feeds and reads every generation."""
    lab = [prior[i] if prior else 0 for i in sorted(kept[:s])] + [gen] * r
    if prior is None and len(set(lab)) <= 1:
        return [None] * len(lab)
    return lab


def new_labels(split: dict[str, tuple[int, int]], survivors: dict[str, list[int]] | None,
               prior: dict[str, list] | None, gen: int) -> dict[str, list]:
    """Per unit, the channel labels after a rejuvenation (:func:`unit_labels`; survivors first, in order)."""
    prior = prior or {}
    return {key: unit_labels(s, r, survivors[key] if survivors else list(range(s)), prior.get(key), gen)
            for key, (s, r) in split.items()}


def counts_of(topo: Topology, split: dict[str, tuple[int, int]], *, separate: bool,
              survivors: dict[str, list[int]] | None = None, prior: dict[str, list] | None = None,
              gen: int = 1) -> dict[str, Counts]:
    """Channel counts by label for a split: generations apart (NR-CR) or all together (``None``)."""
    counts: dict[str, Counts] = {k: {None: g.channels} for k, g in topo.groups.items()}
    for key, (s, r) in split.items():
        if not separate:
            counts[key] = {None: s + r}
            continue
        c: Counts = {}
        p = (prior or {}).get(key)
        for label in unit_labels(s, r, survivors[key] if survivors else list(range(s)), p, gen):
            c[label] = c.get(label, 0) + 1
        counts[key] = c
    return counts


def split_cost(topo: Topology, split: dict[str, tuple[int, int]], *, separate: bool, resource: str,
               **labelling) -> int:
    return sum(layer_costs(topo, counts_of(topo, split, separate=separate, **labelling), resource).values())


def solve_expansion(topo: Topology, live: dict[str, torch.Tensor], target: float, *, judged: list[str],
                    separate: bool, resource: str = "params", realloc: str = "linear",
                    expand_mainstream: bool = True, tolerance: float = 0.01, reinit_dead: Iterable[str] = (),
                    **labelling) -> dict:
    """The shared expansion rate whose rebuilt cost is closest to ``target`` (Sec. 3.2, resource reallocation).
    ``labelling``: ``survivors``, ``prior`` labels and ``gen`` for NR-CR's cost after several rejuvenations;
    ``reinit_dead``: units rebuilt at their width, all new, when none of their channels survived
    (:func:`expansion_counts`).

    Returns ``{"alpha", "split": {unit: (S, R)}, "cost"}``."""
    reinit_dead = set(reinit_dead)

    def at(a: float) -> tuple[dict, int]:
        split = expansion_counts(topo, live, a, judged=judged, realloc=realloc, expand_mainstream=expand_mainstream,
                                 reinit_dead=reinit_dead)
        return split, split_cost(topo, split, separate=separate, resource=resource, **labelling)

    if realloc == "none":
        split, cost = at(1.0)
        return {"alpha": 1.0, "split": split, "cost": cost}
    lo, hi = 1e-3, 2.0
    while at(hi)[1] < target and hi < 1e4:
        hi *= 2
    for _ in range(60):  # cost(alpha) is a non-decreasing step function: bisect to its step at the target
        mid = (lo + hi) / 2
        if at(mid)[1] < target:
            lo = mid
        else:
            hi = mid
    (s_lo, c_lo), (s_hi, c_hi) = at(lo), at(hi)
    split, cost, alpha = (s_lo, c_lo, lo) if abs(c_lo - target) <= abs(c_hi - target) else (s_hi, c_hi, hi)
    if abs(cost - target) > tolerance * target:
        split, cost = _local_search(topo, split, target, judged=judged, separate=separate, resource=resource,
                                    tolerance=tolerance, labelling=labelling)
    return {"alpha": alpha, "split": split, "cost": cost}


def _local_search(topo, split, target, *, judged, separate, resource, tolerance, labelling, max_moves=500):
    """Single-channel moves (one R channel more or fewer in one layer), each the one that brings the cost closest
    to the target, until it is within ``tolerance``: whole channels at one shared rate cannot always land within
    1% on a small network."""
    split = dict(split)
    cost = split_cost(topo, split, separate=separate, resource=resource, **labelling)
    for _ in range(max_moves):
        if abs(cost - target) <= tolerance * target:
            break
        best = None
        for key in judged:
            s, r = split[key]
            for dr in (1, -1):
                if r + dr < 0 or s + r + dr < 1:
                    continue
                trial = dict(split)
                trial[key] = (s, r + dr)
                c = split_cost(topo, trial, separate=separate, resource=resource, **labelling)
                if best is None or abs(c - target) < abs(best[1] - target):
                    best = (trial, c)
        if best is None or abs(best[1] - target) >= abs(cost - target):
            break
        split, cost = best
    return split, cost


def rejuvenation_plan(model: nn.Module, topo: Topology, live: dict[str, torch.Tensor],
                      split: dict[str, tuple[int, int]], *, fresh: bool = False,
                      survivors: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """The ``resize`` plan: per unit, its S channels (old indices, in order; the live ones with the largest
    ``|gamma|`` when fewer are kept) then ``R`` new ones (-1). ``fresh`` (NR-FS): every channel new."""
    survivors = survivors or survivor_order(model, topo, live)
    plan = {}
    for key, (s, r) in split.items():
        plan[key] = [-1] * (s + r) if fresh else sorted(survivors[key][:s]) + [-1] * r
    return plan


def labels_of(topo: Topology, split: dict[str, tuple[int, int]]) -> dict[str, list]:
    """The labels after a first rejuvenation: 0 for S (first), 1 for R (:func:`new_labels`)."""
    return new_labels(split, None, None, 1)


def channel_labels(topo: Topology, labels: dict[str, list], segs: list[tuple[str, int]]) -> list:
    """Labels of the channels of a feature map laid out from ``segs`` (unlabelled groups: ``None``)."""
    out: list = []
    for key, mult in segs:
        lab = labels.get(key) or [None] * topo.groups[key].channels
        for value in lab:
            out += [value] * mult
    return out


def cross_mask(topo: Topology, labels: dict[str, list], layer, gen: int | None = None) -> torch.Tensor:
    """``(out, in)`` bool mask of a layer's cross connections: between channels of different generations (S to R,
    R to S; both ends labelled). With ``gen`` only those with one end in generation ``gen``."""
    lin = torch.tensor([-1 if v is None else v for v in channel_labels(topo, labels, layer.inputs)])
    lout = torch.tensor([-1 if v is None else v for v in channel_labels(topo, labels, layer.outputs)])
    cross = (lout[:, None] >= 0) & (lin[None, :] >= 0) & (lout[:, None] != lin[None, :])
    if gen is not None:
        cross &= (lout[:, None] == gen) | (lin[None, :] == gen)
    return cross


def reinit_split(model: nn.Module, topo: Topology, split: dict[str, tuple[int, int]], gamma0: float,
                 labels: dict[str, list] | None = None, gen: int = 1) -> None:
    """Zero ``W_S->R`` and ``W_R->S`` of every layer (every block between two generations that the new channels
    touch), and set the R channels' BN scales to ``gamma0``, in place (``topo``: the rebuilt model's topology;
    ``split``: per unit ``(S, R)``, S first; ``labels``: :func:`new_labels`, default :func:`labels_of`)."""
    labels = labels if labels is not None else labels_of(topo, split)
    with torch.no_grad():
        for layer in topo.layers:
            if layer.depthwise or not layer.first_call:
                continue
            w = model.get_submodule(layer.module).weight
            cross = cross_mask(topo, labels, layer, gen)
            if cross.any():
                w[cross.view(*cross.shape, *[1] * (w.dim() - 2)).expand_as(w).to(w.device)] = 0
        for key, (s, r) in split.items():
            for bn in topo.units[key].bns:
                if r:
                    model.get_submodule(bn).weight[s:] = gamma0


def _readers(topo: Topology, nid: int) -> list[tuple[str, int]] | None:
    """Conv/linear layers reading feature map ``nid`` through positively homogeneous calls only, as
    ``(module, node they read)``; None when it reaches anything else (an add, a concatenation, a gate)."""
    graph, consumers = topo.graph, topo.graph.consumers()
    out, todo = [], [nid]
    while todo:
        n = todo.pop()
        for op in consumers.get(n, []):
            if op.kind in ("conv", "linear"):
                module = graph.modules[op.module]
                if getattr(module, "groups", 1) != 1:
                    return None
                out.append((op.module, n))
            elif op.kind == "flatten" or (op.kind == "elementwise" and len(op.inputs) == 1 and
                                          any(op.name.startswith(h) for h in _HOMOGENEOUS)):
                todo.append(op.output)
            else:
                return None
    return out if out else None


def rescale(model: nn.Module, topo: Topology, split: dict[str, tuple[int, int]] | None,
            gamma0: float) -> dict[str, int]:
    """Neural rescaling (Sec. 3.2), in place; returns the rescaled channel count per unit. Only S channels (the
    first ``S`` of each unit's ``(S, R)`` in ``split``; every channel when None) of single-writer units whose
    readers allow exact compensation."""
    done = {}
    bn_ops = {op.module: op for op in topo.graph.layer_ops(("norm",))}
    with torch.no_grad():
        for key in topo.order:
            unit = topo.units[key]
            if len(unit.bns) != 1 or unit.bns[0] not in bn_ops:
                continue
            readers = _readers(topo, bn_ops[unit.bns[0]].output)
            if readers is None:
                continue
            bn = model.get_submodule(unit.bns[0])
            g = bn.weight
            sel = torch.ones(len(g), dtype=torch.bool)
            if split is not None and key in split:
                sel[split[key][0]:] = False
            sel = sel.to(g.device) & (g.abs() < gamma0) & (g != 0)
            if not sel.any():
                continue
            s = torch.ones_like(g)
            s[sel] = gamma0 / g[sel].abs()
            g.mul_(s)
            bn.bias.mul_(s)
            for module, nid in readers:
                w = model.get_submodule(module).weight
                place = next((off, k) for n, off, k in topo.groups[key].places if n == nid)
                off, k = place
                cols = torch.ones(w.shape[1], dtype=g.dtype, device=w.device)
                cols[off:off + len(g) * k] = s.repeat_interleave(k)
                w.div_(cols.view(1, -1, *[1] * (w.dim() - 2)))
            done[key] = int(sel.sum())
    return done


def real_cost(model: nn.Module, topo: Topology, labels: dict[str, list] | None, resource: str = "params") -> int:
    """The cost counted from the model's own weights (nonzero-able entries): every conv/linear weight's
    ``out x in x K`` minus the cross blocks that ``labels`` hold at zero. An independent check of
    :func:`solve_expansion`'s arithmetic."""
    total = 0
    seen = set()
    for layer in topo.layers:
        if resource == "params" and layer.module in seen:
            continue
        seen.add(layer.module)
        w = model.get_submodule(layer.module).weight
        n = math.prod(w.shape)
        if labels and not layer.depthwise:
            n -= int(cross_mask(topo, labels, layer).sum()) * math.prod(w.shape[2:])
        total += n * (layer.positions if resource == "flops" else 1)
    return total
