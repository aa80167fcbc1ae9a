"""Layer-level grafting between networks and the K-network ring (Sec. 3.1.3, 3.4, Algorithm 1).

A *layer group* is one weight-bearing layer (a conv or a linear layer) and every state entry that follows it in
``state_dict`` order up to the next one: its bias, its batch norm (weight, bias, running mean and variance). One
alpha is computed per group from the layer's weight and applied to every floating entry of the group, so a BN is
mixed with the alpha of its conv (as the official code does, issues #3/#16). Integer entries
(``num_batches_tracked``) are kept as they are: a blended counter means nothing.

The rule for the classifier and shortcut layers (``rule``):

* ``own`` (default): every conv and linear layer, the classifier and 1x1 shortcut/downsample convs included,
  gets its own alpha from its own weight;
* ``official``: as the official CIFAR code, which recomputes alpha only for keys containing ``conv``: a linear
  layer (the classifier) and a conv whose name contains ``shortcut`` or ``downsample`` take the alpha of the
  conv before them.

The ring: network k takes from network k-1 (network 1 from network K), always from the *pre-graft* weights of
the same epoch. ``staggered`` grafts half of the networks at a time (network k at graft n when k + n is even);
with K = 2 that is one direction per epoch, since a simultaneous graft of two networks makes them identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from resprout.methods.grafting.criteria import layer_information
from resprout.methods.grafting.weighting import adaptive_alpha

RULES = ("own", "official")
RINGS = ("simultaneous", "staggered")
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class LayerGroup:
    """One alpha's reach: ``weight`` (the key the information is computed from) and every key it mixes."""

    weight: str
    keys: list[str] = field(default_factory=list)


def layer_groups(model: nn.Module, rule: str = "own") -> list[LayerGroup]:
    """The layer groups of ``model`` in ``state_dict`` order (see the module docstring for ``rule``)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    opens = set()
    for name, mod in model.named_modules():
        if isinstance(mod, _WEIGHTED) and getattr(mod, "weight", None) is not None:
            if rule == "official" and (isinstance(mod, nn.Linear) or "shortcut" in name or "downsample" in name):
                continue
            opens.add(f"{name}.weight" if name else "weight")
    groups: list[LayerGroup] = []
    before: list[str] = []  # entries before the first layer (rare) join the first group
    for key in model.state_dict():
        if key in opens:
            groups.append(LayerGroup(key, [key]))
        elif groups:
            groups[-1].keys.append(key)
        else:
            before.append(key)
    if groups:
        groups[0].keys[:0] = before
    return groups


def group_information(state: dict[str, torch.Tensor], groups: list[LayerGroup], *, criterion: str = "entropy",
                      bins: int = 10, edge: str = "official") -> list[float]:
    """The information (Eq. 6, or the l1 norm) of every group's layer in one network's state dict."""
    return [layer_information(state[g.weight], criterion, bins, edge) for g in groups]


def group_alphas(own: dict[str, torch.Tensor], other: dict[str, torch.Tensor], groups: list[LayerGroup], *,
                 criterion: str = "entropy", bins: int = 10, edge: str = "official", a: float = 0.4,
                 c: float = 500.0, round_to: float | None = 0.01) -> list[float]:
    """Eq. 7 for every group: alpha from the information of ``own`` and ``other`` (two state dicts)."""
    info = dict(criterion=criterion, bins=bins, edge=edge)
    return alphas_of(group_information(own, groups, **info), group_information(other, groups, **info), a=a, c=c,
                     round_to=round_to)


def alphas_of(h_own: list[float], h_other: list[float], *, a: float = 0.4, c: float = 500.0,
              round_to: float | None = 0.01) -> list[float]:
    return [adaptive_alpha(x, y, a, c, round_to) for x, y in zip(h_own, h_other)]


def mix_states(own: dict[str, torch.Tensor], other: dict[str, torch.Tensor], groups: list[LayerGroup],
               alphas: list[float]) -> dict[str, torch.Tensor]:
    """Eq. 2 per group: ``alpha * own + (1 - alpha) * other`` for every floating entry; integers stay ``own``."""
    out = {}
    for g, alpha in zip(groups, alphas):
        for k in g.keys:
            mine = own[k]
            # lerp: other + alpha * (mine - other), Eq. 2 in one fused operation
            out[k] = torch.lerp(other[k], mine, alpha) if mine.is_floating_point() else mine.clone()
    return out


def grafts_at(k: int, n: int, ring: str) -> bool:
    """Whether network ``k`` (1-based) takes from its predecessor at graft number ``n`` (0-based)."""
    if ring == "simultaneous":
        return True
    if ring == "staggered":
        return (k + n) % 2 == 0
    raise ValueError(f"ring must be one of {RINGS}, not {ring!r}")


def predecessor(k: int, count: int) -> int:
    """The network network ``k`` takes from: ``k - 1``, and network 1 takes from network ``count`` (1-based)."""
    return count if k == 1 else k - 1


def graft_ring(states: list[dict[str, torch.Tensor]], groups: list[LayerGroup], *, n: int = 0,
               ring: str = "simultaneous", **alpha_options) -> tuple[list[dict[str, torch.Tensor]], list[list[float]]]:
    """Algorithm 1's graft of K networks (their pre-graft state dicts, in ring order): the new state of every
    network and its alphas (an empty list for a network that does not graft at ``n``)."""
    count = len(states)
    a, c, round_to = (alpha_options.pop(k, d) for k, d in (("a", 0.4), ("c", 500.0), ("round_to", 0.01)))
    # each network's information once (not once per pair)
    info = [group_information(s, groups, **alpha_options) if count > 1 else [] for s in states]
    new, alphas = [], []
    for k in range(1, count + 1):
        j = predecessor(k, count)
        own, other = states[k - 1], states[j - 1]
        if count < 2 or not grafts_at(k, n, ring):
            new.append(own)
            alphas.append([])
            continue
        al = alphas_of(info[k - 1], info[j - 1], a=a, c=c, round_to=round_to)
        new.append(mix_states(own, other, groups, al))
        alphas.append(al)
    return new, alphas
