"""Shared by the benchmark scripts: a ratio with its spread, printed with no more digits than the spread supports.

Every ratio in BENCHMARKS.md is computed once per interleaved repetition (A B A B ...: both sides of the ratio
measured back to back, so slow phases of a shared machine hit both), then reported as the median with the minimum
and maximum over the repetitions. The median keeps as many decimals as the width of that range supports: its last
digit is of the order of max - min (a range of 0.2 gives one decimal, 0.02 two), and the bounds get one more.
"""

from __future__ import annotations

import math
import statistics


def spread(values) -> tuple[float, float, float]:
    """(min, median, max) of the per-repetition values."""
    v = sorted(float(x) for x in values)
    if not v:
        raise ValueError("no values")
    return v[0], statistics.median(v), v[-1]


def decimals(lo: float, hi: float, cap: int = 3) -> int:
    """Decimals the range [lo, hi] supports: the order of magnitude of its width (at most ``cap``)."""
    width = hi - lo
    if width <= 0 or not math.isfinite(width):
        return cap
    return max(0, min(cap, math.ceil(-math.log10(width))))


def fmt(values, *, scale: float = 1.0, suffix: str = "", bold: bool = True) -> str:
    """``**median** (min-max)`` of ``values * scale``, e.g. ``**3.3x** (3.21-3.42)`` or ``**0.9%** (0.71-1.13)``."""
    values = list(values)
    lo, med, hi = (scale * x for x in spread(values))
    if len(values) == 1:  # no spread to judge the digits by: two significant digits, and said so
        mid = f"{med:.2g}{suffix}" if abs(med) < 100 else f"{med:.0f}{suffix}"
        return f"{'**' + mid + '**' if bold else mid} (one repetition: no spread)"
    d = decimals(lo, hi)
    mid = f"{med:.{d}f}{suffix}"
    return f"{'**' + mid + '**' if bold else mid} ({lo:.{d + 1}f}–{hi:.{d + 1}f})"


def fmt_pct(values, **kw) -> str:
    """A share (a fraction) as percent with its spread."""
    return fmt(values, scale=100.0, suffix="%", **kw)


NOTE = ("Every ratio is the median over interleaved repetitions with its minimum and maximum in parentheses; the "
        "median keeps only the digits that range supports.")


def machine_note() -> str:
    """The load the figures were measured under (these machines are shared): one clause for a section's header."""
    import os

    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end"
