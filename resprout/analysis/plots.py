"""Plots a finished run draws from its results, beside its checkpoint: methods return data, analysis draws it.

An entry maps a key of a run's results (``results["rejuvenation"]``, written by ``method=nr``) to the function that
draws it, ``fn(report, out_dir) -> [paths]``; :func:`write_result_plots` calls the ones whose key the results hold
(so a run without them imports no plotting library) and records the files' names in ``report["plots"]``.
"""

from __future__ import annotations

from pathlib import Path

from resprout.registry import Registry

RESULT_PLOTS: Registry = Registry("result plot")
RESULT_PLOTS.add("rejuvenation", "resprout.analysis.rejuvenation:write_plots",
                 "Neural Rejuvenation: utilization and test accuracy against epochs, per-layer widths")


def write_result_plots(results: dict, out_dir: str | Path) -> None:
    """Draw every plot of :data:`RESULT_PLOTS` whose key ``results`` holds into ``out_dir``."""
    for key in RESULT_PLOTS.names():
        report = results.get(key)
        if isinstance(report, dict):
            report["plots"] = [Path(p).name for p in RESULT_PLOTS.get(key)(report, out_dir)]
