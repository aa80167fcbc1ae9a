"""Adaptive weighting of two networks' layers (Sec. 3.3, Eq. 2 and 7).

``alpha = 0.5 + (A / pi) * arctan(c * (H_self - H_other))`` and ``W_self <- alpha W_self + (1 - alpha) W_other``.

The printed Eq. 7 reads ``alpha = A * arctan(c * dH) + 0.5``; taken literally with A = 0.4 that ranges over
(-0.13, 1.13) and can leave (0, 1), which Eq. 2 requires. The official code divides by pi, which gives
alpha in (0.5 - A/2, 0.5 + A/2) = (0.3, 0.7) for A = 0.4; that is what this implements. The official code also
rounds alpha to 0.01 (``round_to=0.01``; ``None`` keeps it exact). Equal information gives exactly 0.5.
"""

from __future__ import annotations

import math


def adaptive_alpha(h_self: float, h_other: float, a: float = 0.4, c: float = 500.0,
                   round_to: float | None = 0.01) -> float:
    """The share of its own weights a network keeps (Eq. 7 with the official 1/pi)."""
    alpha = 0.5 + (a / math.pi) * math.atan(c * (h_self - h_other))
    if round_to:
        digits = round(-math.log10(round_to))
        alpha = round(alpha, digits)
    return alpha


def alpha_bounds(a: float = 0.4) -> tuple[float, float]:
    """The open interval alpha lies in: ``(0.5 - a/2, 0.5 + a/2)``."""
    return 0.5 - a / 2, 0.5 + a / 2


def lr_factors(k: int) -> list[float]:
    """The official per-network learning-rate factors ``(1 + cos(pi (K - k) / K)) / 2`` for k = 1..K
    (``--difflr``): K=2 gives 0.5 and 1, K=4 gives 0.146, 0.5, 0.854 and 1."""
    return [(1 + math.cos(math.pi * (k - i) / k)) / 2 for i in range(1, k + 1)]
