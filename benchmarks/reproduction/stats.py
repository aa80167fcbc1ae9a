"""The verdict of a claim "row A beats row B": a paired difference, its standard error, and three words.

Both rows are evaluated on the same test images, seed by seed. Let ``c[s, i]`` be the difference of the two runs
of seed ``s`` on test image ``i`` (their top-1 correctness, 1, 0 or -1), for ``n`` seeds and ``N`` images. The
difference of the claim is the mean ``d = mean(c)``, in points. Its error has two sources, and a plain standard
deviation over seeds misses the second:

* the seeds (initialization, data order): the paired differences ``d_s = mean_i c[s, i]`` vary from seed to seed;
* the test set: every seed is scored on the same ``N`` images, a sample of the images the claim is about, so the
  error of that sample is shared by every seed and does not average out over seeds.

With the two-way model ``c[s, i] = mu + a_s + b_i + ab_si`` (seed effect, image effect, their interaction):
``Var(d) = var_a / n + var_b / N + var_ab / (n N)``. Its unbiased estimate is
``s_d^2 / n + s_x^2 / N - MS_res / (n N)``, where ``s_d^2`` is the sample variance over seeds of ``d_s``, ``s_x^2``
the sample variance over images of the per-image means ``x_i = mean_s c[s, i]``, and ``MS_res`` the residual mean
square of the two-way table (``E[s_d^2] = var_a + var_ab / N``, ``E[s_x^2] = var_b + var_ab / n``,
``E[MS_res] = var_ab``). It is floored at ``max(s_d^2 / n, s_x^2 / N)``, two estimates each of which is in
expectation below the true variance. With one seed the seed term is unknown, and the verdict is "not resolved".
With one seed and the same model twice, ``s_x^2 / N`` is McNemar's variance of a difference of paired proportions:
``(b + c) / N^2 - (b - c)^2 / N^3`` for ``b`` and ``c`` images that only one of the two gets right.

When a run's per-image record is missing (a pseudo-member such as a grafting ensemble), the test term is the
variance of two independent proportions, ``(p_A q_A + p_B q_B) / N``: for two networks trained on the same data,
whose errors are positively correlated, this overstates the paired variance (a conservative choice); the seed
term is then ``s_d^2 / n`` over the seeds' accuracies. A re-identification run keeps no per-image record either: its
rank-1 is a proportion of its ``N`` queries, and its mAP a mean of per-query average precisions in [0, 1], whose
variance is at most ``p q`` for a mean ``p``, so the same term bounds both.

A property of the weights (the share of filters with a small l1 norm) has no test-set error: its variance is the
seeds' alone, ``s_d^2 / n`` (:func:`paired_from_values`).

A claim may carry a margin ``m`` (points): "A - B > m" or "A - B < m". Its verdict is "holds" when ``d - m`` lies
beyond 2 standard errors in the claimed direction, "reversed" when it lies beyond 2 standard errors the other way,
and "not resolved" otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HOLDS, REVERSED, UNRESOLVED = "holds", "reversed", "not resolved"
DIRECTIONS = (">", "<")


@dataclass
class Paired:
    """A paired difference A - B (fractions) and its standard error."""

    diff: float
    se: float
    n: int  # paired seeds
    images: int  # test images per run
    exact: bool  # the test term from per-image records (else the independent-proportions bound)
    seed_var: float  # the seed term of Var(d)
    test_var: float  # the test term of Var(d)


def paired_from_bits(a: np.ndarray, b: np.ndarray) -> Paired:
    """``a``, ``b``: (seeds, images) boolean per-image correctness of the two rows, seed by seed (row ``s`` of
    each comes from the same seed)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 2:
        raise ValueError(f"paired_from_bits needs two (seeds, images) arrays of one shape, got {a.shape}, {b.shape}")
    c = a - b
    n, N = c.shape
    d_s = c.mean(axis=1)
    x_i = c.mean(axis=0)
    d = float(c.mean())
    test_var = float(x_i.var(ddof=1)) / N
    if n < 2:
        return Paired(d, math.sqrt(test_var), n, N, True, math.nan, test_var)
    s_d2 = float(d_s.var(ddof=1))
    resid = c - d_s[:, None] - x_i[None, :] + d
    ms_res = float((resid ** 2).sum()) / ((n - 1) * (N - 1))
    unbiased = s_d2 / n + test_var - ms_res / (n * N)
    var = max(unbiased, s_d2 / n, test_var)
    return Paired(d, math.sqrt(var), n, N, True, s_d2 / n, var - s_d2 / n)


def paired_from_accuracies(a: list[float], b: list[float], images: int) -> Paired:
    """The same without per-image records: the seeds' accuracies (fractions, seed by seed) and the test-set size."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.shape != b_.shape or a_.ndim != 1 or len(a_) < 1:
        raise ValueError("paired_from_accuracies needs two equally long lists of accuracies")
    n = len(a_)
    d_s = a_ - b_
    pa, pb = float(a_.mean()), float(b_.mean())
    test_var = (pa * (1 - pa) + pb * (1 - pb)) / images
    if n < 2:
        return Paired(float(d_s.mean()), math.sqrt(test_var), n, images, False, math.nan, test_var)
    seed_var = float(d_s.var(ddof=1)) / n
    return Paired(float(d_s.mean()), math.sqrt(seed_var + test_var), n, images, False, seed_var, test_var)


def paired_from_values(a: list[float], b: list[float]) -> Paired:
    """A paired difference of a property of the weights (a share of small filters): the seeds are its only sample,
    so its variance is the seeds' alone, ``s_d^2 / n``."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.shape != b_.shape or a_.ndim != 1 or len(a_) < 1:
        raise ValueError("paired_from_values needs two equally long lists of values")
    d_s = a_ - b_
    n = len(d_s)
    seed_var = float(d_s.var(ddof=1)) / n if n > 1 else math.nan
    return Paired(float(d_s.mean()), math.sqrt(seed_var), n, 0, False, seed_var, 0.0)


def verdict(p: Paired, direction: str = ">", margin: float = 0.0) -> str:
    """"holds", "reversed" or "not resolved" for the claim ``A - B {direction} margin`` (margin as a fraction)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if p.n < 2 or not math.isfinite(p.se):
        return UNRESOLVED
    gap = (p.diff - margin) * (1 if direction == ">" else -1)  # positive: the claimed direction
    if p.se > 0:
        z = gap / p.se
    else:  # no spread at all: the sign decides
        z = math.copysign(math.inf, gap) if gap else 0.0
    if z > 2:
        return HOLDS
    if z < -2:
        return REVERSED
    return UNRESOLVED


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


__all__ = ["DIRECTIONS", "HOLDS", "Paired", "REVERSED", "UNRESOLVED", "mean_std", "paired_from_accuracies",
           "paired_from_bits", "paired_from_values", "verdict"]
