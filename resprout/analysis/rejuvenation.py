"""Plots of a Neural Rejuvenation run (Qiao et al., CVPR 2019): utilization and test accuracy against epochs (their
Fig. 1), with every rejuvenation marked, and the per-layer widths before and after each rejuvenation.

Input is the ``rejuvenation`` report of a run's results (``method=nr`` writes it; see
:meth:`resprout.methods.rejuvenation.NeuralRejuvenation.report`).
"""

from __future__ import annotations

from pathlib import Path

UTILIZATION_PNG = "rejuvenation-utilization.png"
WIDTHS_PNG = "rejuvenation-widths.png"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_utilization(report: dict, path: str | Path) -> str:
    """Utilization r (left axis) and test top-1 (right axis) against epochs; dashed lines at rejuvenations."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    hist = report.get("utilization", [])
    ax.plot([h["epoch"] for h in hist], [h["r"] for h in hist], "o-", color="tab:blue", ms=3, label="utilization r")
    ax.axhline(report.get("threshold", 0.5), color="tab:blue", ls=":", lw=1, label="T_r")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"utilization ({report.get('resource', 'params')})", color="tab:blue")
    ax.set_ylim(0, 1.05)
    acc = report.get("accuracy", [])
    if acc:
        ax2 = ax.twinx()
        ax2.plot([a["epoch"] for a in acc], [100 * a["top1"] for a in acc], "s-", color="tab:red", ms=3)
        ax2.set_ylabel("test top-1 (%)", color="tab:red")
    for rec in report.get("rejuvenations", []):
        ax.axvline(rec["epoch"], color="gray", ls="--", lw=1)
    ax.set_title(f"Neural Rejuvenation ({report.get('mode', 'nr')}, {report.get('scheme', '')}): "
                 f"{report.get('count', 0)} rejuvenation(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_widths(report: dict, path: str | Path) -> str:
    """Per layer (channel group): width before, live before, and width after each rejuvenation."""
    plt = _plt()
    recs = report.get("rejuvenations", [])
    fig, axes = plt.subplots(len(recs) or 1, 1, figsize=(7.5, 2.8 * max(1, len(recs))), squeeze=False)
    for ax, rec in zip(axes[:, 0], recs or [None]):
        if rec is None:
            ax.text(0.5, 0.5, "no rejuvenation", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        keys = list(rec["widths_before"])
        x = range(len(keys))
        ax.bar([i - 0.27 for i in x], [rec["widths_before"][k] for k in keys], 0.27, label="before")
        ax.bar(list(x), [rec["live_before"][k] for k in keys], 0.27, label="live before")
        ax.bar([i + 0.27 for i in x], [rec["widths_after"].get(k, 0) for k in keys], 0.27, label="after")
        ax.set_xticks(list(x), keys, rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("channels")
        ax.set_title(f"epoch {rec['epoch']:.2f} ({rec.get('trigger', 'threshold')}): r = "
                     f"{rec['utilization_before']:.3f}, cost {rec['cost_before']:,} "
                     f"-> {rec['cost_after']:,} (target {rec['target']:,.0f})", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write_plots(report: dict, out_dir: str | Path) -> list[str]:
    """Both PNGs into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    return [plot_utilization(report, out / UTILIZATION_PNG), plot_widths(report, out / WIDTHS_PNG)]
