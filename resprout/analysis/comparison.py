"""The table and plot of ``resprout compare``, read from the results store (never from logs).

The table is the one the papers print: per method, the top-1 of the last epoch (the papers' number) and of the best
epoch, mean ± sample standard deviation over seeds, with the test-set size and the equal-compute baseline marked.
"Best" is the test top-1 at the epoch of the best validation top-1 when the runs have a validation split, and the
highest test top-1 otherwise (an optimistic, oracle choice: the table says which).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from resprout.analysis.report import RunData
from resprout.analysis.tables import format_table, pm

MEMBER = "model"


@dataclass
class Row:
    """One row: the runs of one method and budget over the seeds."""

    label: str  # "ke+ls"
    generations: int
    epochs: int
    baseline: bool
    runs: list[RunData] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    @property
    def shape(self) -> str:
        return f"{self.generations} x {self.epochs}"


def test_curve(run: RunData) -> list[tuple[int, float]]:
    """(epoch counted over all generations, from 1; test top-1) of a run's evaluated epochs."""
    epochs = run.config["epochs"]
    return [(g * epochs + e + 1, v) for g, e, v in run.curves.get((MEMBER, "test", "top1"), [])]


def last_top1(run: RunData) -> float | None:
    pts = run.curves.get((MEMBER, "test", "top1"))
    return pts[-1][2] if pts else None


def best_top1(run: RunData) -> tuple[float, str] | None:
    """(test top-1 at the best epoch, the split the best epoch was chosen on)."""
    test = run.curves.get((MEMBER, "test", "top1"), [])
    if not test:
        return None
    val = run.curves.get((MEMBER, "val", "top1"), [])
    if val:
        at = {(g, e): v for g, e, v in test}
        g, e, _ = max(val, key=lambda p: p[2])  # the first of equal maxima: the earliest epoch
        if (g, e) in at:
            return at[(g, e)], "val"
    return max(v for _, _, v in test), "test"


def generation_top1(run: RunData) -> list[float]:
    """The last-epoch test top-1 of every generation (N_1 .. N_G)."""
    gens = run.generations.get(MEMBER, {})
    return [gens[g]["test_top1"] for g in sorted(gens) if "test_top1" in gens[g]]


def summary(rows: list[Row]) -> list[dict]:
    """The numbers behind the table (fractions, per seed)."""
    out = []
    for r in rows:
        bests = [b for run in r.runs if (b := best_top1(run)) is not None]
        out.append({"method": r.label, "generations": r.generations, "epochs": r.epochs, "baseline": r.baseline,
                    "seeds": r.seeds, "last": [v for run in r.runs if (v := last_top1(run)) is not None],
                    "best": [b[0] for b in bests], "best_on": bests[0][1] if bests else None,
                    "per_generation": [generation_top1(run) for run in r.runs]})
    return out


def table(rows: list[Row], sizes: dict) -> str:
    """The markdown table (last and best top-1, mean ± std over seeds)."""
    stats = summary(rows)
    best_on = next((s["best_on"] for s in stats if s["best_on"]), "test")
    best_head = "best top-1 (epoch chosen on val)" if best_on == "val" else "best top-1 (max over epochs, on test)"
    headers = ["method", "gens x epochs", "total epochs", "seeds", "test images", "last top-1", best_head]
    body = []
    for r, s in zip(rows, stats):
        name = f"**{r.label}** (equal-compute baseline)" if r.baseline else r.label
        body.append([name, r.shape, r.generations * r.epochs, len(s["last"]), sizes.get("test", "?"),
                     pm(s["last"]), pm(s["best"])])
    return format_table(headers, body)


def generation_table(rows: list[Row]) -> str | None:
    """Last-epoch test top-1 of each generation ``N_g`` (mean ± std) of the rows with several generations."""
    multi = [(r, s) for r, s in zip(rows, summary(rows)) if r.generations > 1]
    if not multi:
        return None
    n = max(r.generations for r, _ in multi)
    headers = ["method"] + [f"N_{g}" for g in range(1, n + 1)]
    body = []
    for r, s in multi:
        cols = []
        for g in range(n):
            vals = [p[g] for p in s["per_generation"] if len(p) > g]
            cols.append(pm(vals) if vals else "")
        body.append([r.label] + cols)
    return format_table(headers, body)


def plot(rows: list[Row], path: Path, title: str = "") -> Path:
    """Test top-1 against epochs (generations laid end to end) for every row: the mean over seeds as a line and
    ± one standard deviation as a band, each with its own legend entry; integer epoch ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    many = len(rows) > 4  # then the legend goes beside the axes, where it hides no curve
    fig, ax = plt.subplots(figsize=(13 if many else 9, 6 if many else 5.5))
    for r in rows:
        curves = [test_curve(run) for run in r.runs]
        n = min((len(c) for c in curves), default=0)
        if n == 0:
            continue
        x = np.array([p[0] for p in curves[0][:n]])
        y = np.array([[p[1] for p in c[:n]] for c in curves]) * 100
        label = f"{r.label} ({r.shape})" + (" equal-compute baseline" if r.baseline else "")
        line, = ax.plot(x, y.mean(0), lw=2.2 if r.baseline else 1.5, ls="--" if r.baseline else "-",
                        marker="o" if n <= 30 else None, ms=3, label=f"{label}: mean of {len(curves)} seeds")
        if len(curves) > 1:
            sd = y.std(0, ddof=1)
            ax.fill_between(x, y.mean(0) - sd, y.mean(0) + sd, color=line.get_color(), alpha=0.15,
                            label=f"{label}: ± 1 std")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch (over all generations)", ylabel="test top-1 (%)", title=title or "test accuracy")
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
