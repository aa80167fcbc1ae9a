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

# the member a run reports: its network, or the first of the peers a method made from it (grafting and mutual
# learning replace `model` by peer_1..peer_K; peer_1 has the run's seed: its initial weights and data order)
MEMBERS = ("model", "peer_1")


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

    @property
    def member(self) -> str:
        return member(self.runs[0]) if self.runs else MEMBERS[0]

    @property
    def name(self) -> str:
        """The method, and the member it is reported by when that is not the run's ``model``."""
        return self.label + (f" [{self.member}]" if self.member != MEMBERS[0] else "")


def member(run: RunData) -> str:
    """The member whose accuracy stands for the run (see ``MEMBERS``)."""
    return next((m for m in MEMBERS if (m, "test", "top1") in run.curves), MEMBERS[0])


def test_curve(run: RunData) -> list[tuple[int, float]]:
    """(epoch counted over all generations, from 1; test top-1) of a run's evaluated epochs."""
    epochs = run.config["epochs"]
    return [(g * epochs + e + 1, v) for g, e, v in run.curves.get((member(run), "test", "top1"), [])]


def last_top1(run: RunData) -> float | None:
    pts = run.curves.get((member(run), "test", "top1"))
    return pts[-1][2] if pts else None


def best_top1(run: RunData) -> tuple[float, str] | None:
    """(test top-1 at the best epoch, the split the best epoch was chosen on)."""
    test = run.curves.get((member(run), "test", "top1"), [])
    if not test:
        return None
    val = run.curves.get((member(run), "val", "top1"), [])
    if val:
        at = {(g, e): v for g, e, v in test}
        g, e, _ = max(val, key=lambda p: p[2])  # the first of equal maxima: the earliest epoch
        if (g, e) in at:
            return at[(g, e)], "val"
    return max(v for _, _, v in test), "test"


def generation_top1(run: RunData) -> list[float]:
    """The last-epoch test top-1 of every generation (N_1 .. N_G)."""
    gens = run.generations.get(member(run), {})
    return [gens[g]["test_top1"] for g in sorted(gens) if "test_top1" in gens[g]]


def summary(rows: list[Row]) -> list[dict]:
    """The numbers behind the table (fractions, per seed)."""
    out = []
    for r in rows:
        bests = [b for run in r.runs if (b := best_top1(run)) is not None]
        out.append({"method": r.label, "member": r.member, "generations": r.generations, "epochs": r.epochs,
                    "baseline": r.baseline, "seeds": r.seeds,
                    "last": [v for run in r.runs if (v := last_top1(run)) is not None],
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
        name = f"**{r.name}** (equal-compute baseline)" if r.baseline else r.name
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
        body.append([r.name] + cols)
    return format_table(headers, body)


def plot(rows: list[Row], path: Path, title: str = "") -> Path:
    """Test top-1 against epochs (generations laid end to end) for every row: the mean over seeds as a line and
    ± one standard deviation as a band, named together by one legend entry; the equal-compute baseline dashed and
    thicker; the generation boundaries of the rows with several generations as light vertical lines, named once
    (a re-initialization's drop then reads as what it is). Integer epoch ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    from resprout.analysis.report import generation_boundaries, legend, mean_band

    many = len(rows) > 4  # then the legend goes beside the axes, where it hides no curve
    fig, ax = plt.subplots(figsize=(11 if many else 9, 5.5 if many else 5))
    entries = []
    for r in rows:
        curves = [test_curve(run) for run in r.runs]
        n = min((len(c) for c in curves), default=0)
        if n == 0:
            continue
        x = np.array([p[0] for p in curves[0][:n]])
        y = np.array([[p[1] for p in c[:n]] for c in curves]) * 100
        label = f"{r.name} ({r.shape})" + (" equal-compute baseline" if r.baseline else "")
        entries.append(mean_band(ax, x, y, label, lw=2.2 if r.baseline else 1.5, ls="--" if r.baseline else "-",
                                 marker="o" if n <= 30 else None, ms=3))
    multi = [r for r in rows if r.generations > 1 and r.runs]
    where = {g * r.epochs + 0.5 for r in multi for g in range(1, r.generations)}
    boundary = generation_boundaries(ax, where, f"generation boundary ({', '.join(r.label for r in multi)})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch (over all generations)", ylabel="test top-1 (%)", title=title or "test accuracy")
    ax.grid(alpha=0.3)
    if many:
        legend(ax, entries + [boundary], fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        legend(ax, entries + [boundary], fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
