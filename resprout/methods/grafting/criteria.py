"""How much information a layer or a filter holds (Cheng et al., "Filter Grafting for Deep Neural Networks:
Reason, Method, and Cultivation", Sec. 3.2).

* :func:`filter_l1`: the l1 norm of every output filter, Eq. 3.
* :func:`layer_l1`: the l1 norm of a whole layer (the ``l1`` criterion of Table 3).
* :func:`layer_entropy`: the entropy of the whole layer's weight values, Eq. 6: the values are put into ``bins``
  equal-width bins over the layer's own range ``[min, max]`` and ``H = -sum_k p_k log p_k`` (natural log, empty
  bins skipped). Because every layer uses its own range, ``H(s * W) = H(W)`` for ``s > 0``.

The official edge case (``edge="official"``): the bins are half-open ``[lo + i*s, lo + (i+1)*s)``, so the
maximum value(s) fall into no bin and the probabilities sum to slightly less than one. ``edge="inclusive"``
closes the last bin so every value is counted. A constant layer has entropy 0 either way.

Every criterion is computed in at least fp32: a bf16 or fp16 tensor is widened first (bf16 keeps 8 bits of
mantissa, too few for bin edges ``lo + i * step`` or for summing a layer's l1 norm). The trainer's weights are fp32
whatever the run's precision (autocast computes in bf16, it does not store in it), so this only matters for a
tensor given in low precision.
"""

from __future__ import annotations

import torch

EDGES = ("official", "inclusive")


def _values(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` detached, widened to fp32 when it is stored in a lower precision."""
    w = weight.detach()
    return w.float() if w.dtype in (torch.bfloat16, torch.float16) else w


def filter_l1(weight: torch.Tensor) -> torch.Tensor:
    """``||W_j||_1`` of every output filter ``j`` (dim 0) of a conv or linear weight (Eq. 3)."""
    return _values(weight).abs().reshape(weight.shape[0], -1).sum(dim=1)


def layer_l1(weight: torch.Tensor) -> float:
    """The l1 norm of the whole layer."""
    return float(_values(weight).abs().sum())


def bin_counts(weight: torch.Tensor, bins: int = 10, edge: str = "official") -> tuple[torch.Tensor, int]:
    """(counts of the ``bins`` equal-width bins over the tensor's own range, number of values)."""
    if edge not in EDGES:
        raise ValueError(f"edge must be one of {EDGES}, not {edge!r}")
    x = _values(weight).reshape(-1)
    n = x.numel()
    if n == 0:
        return torch.zeros(bins, dtype=torch.long), n
    lo, hi = x.min(), x.max()
    if hi == lo:
        return torch.zeros(bins, dtype=torch.long), n
    step = (hi - lo) / bins
    # the edges as the official loop computes them (lo + i*step, in the weight's dtype), so a value on an edge
    # lands where its `e_i <= x < e_{i+1}` puts it; the bin is found by division, then moved by at most one where
    # rounding put it beside its edges
    edges = lo + step * torch.arange(bins + 2, dtype=x.dtype, device=x.device)
    idx = ((x - lo) / step).floor().long().clamp_(0, bins)
    idx -= (x < edges[idx]).long()
    idx += (x >= edges[idx + 1]).long()
    full = torch.bincount(idx.clamp_(0, bins + 1), minlength=bins + 2)
    counts = full[:bins].clone()
    if edge == "inclusive":  # the last bin is closed: it also holds what lies at or above the last edge
        counts[-1] += full[bins:].sum()
    return counts.cpu(), n


def layer_entropy(weight: torch.Tensor, bins: int = 10, edge: str = "official") -> float:
    """Entropy of the layer's weight values over ``bins`` bins of its own range (Eq. 6), in nats."""
    counts, n = bin_counts(weight, bins, edge)
    if n == 0:
        return 0.0
    p = counts[counts > 0].double() / n
    return float(-(p * p.log()).sum())


def layer_information(weight: torch.Tensor, criterion: str = "entropy", bins: int = 10,
                      edge: str = "official") -> float:
    """The criterion the adaptive weighting compares: ``entropy`` (Eq. 6) or ``l1`` (the layer's l1 norm)."""
    if criterion == "entropy":
        return layer_entropy(weight, bins, edge)
    if criterion == "l1":
        return layer_l1(weight)
    raise ValueError(f"criterion must be entropy or l1, not {criterion!r}")
