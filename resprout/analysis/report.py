"""Reports from the results store: the runs list, comparison tables (mean +- std over seeds) and PNG curves.

Runs whose configurations differ only by ``seed`` form one group (same ``group_key`` in the store); a group's
numbers are the mean and sample standard deviation over its seeds. Accuracies are reported at the last epoch
(as the papers do) and at the best epoch, where "best" is chosen on validation when the run had a validation split
and on test otherwise (the table says which).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from resprout.analysis.tables import format_table, pm
from resprout.engine.rundir import SavedRun
from resprout.engine.store import RunRecord, Store
from resprout.errors import CheckpointError

# keys that never make two runs differ in a way worth labelling
_LABEL_SKIP = {"seed", "device", "threads", "progress", "checkpoint_every", "checkpoint_minutes", "loggers"}


@dataclass
class RunData:
    record: RunRecord
    # (member, split, metric) -> [(generation, epoch, value)]
    curves: dict = field(default_factory=lambda: defaultdict(list))
    # member -> generation -> metric -> value
    generations: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(dict)))

    @property
    def config(self) -> dict:
        return self.record.config

    def final(self, member: str, split: str = "test", metric: str = "top1") -> float | None:
        pts = self.curves.get((member, split, metric))
        return pts[-1][2] if pts else None

    def best(self, member: str, metric: str = "top1") -> tuple[float, str] | None:
        split = "val" if self.curves.get((member, "val", metric)) else "test"
        pts = self.curves.get((member, split, metric))
        return (max(p[2] for p in pts), split) if pts else None

    def members(self) -> list[str]:
        return sorted({m for (m, _, _) in self.curves})


def load_run(run_dir: Path) -> RunData:
    saved = SavedRun.open(run_dir)
    info, store_path = saved.info, saved.store
    if not store_path.is_file():
        raise CheckpointError(f"{run_dir}: its results store {store_path} does not exist")
    with Store(store_path, create=False) as store:
        record = store.run(info["run_id"])
        if record is None:
            raise CheckpointError(f"{run_dir}: run {info['run_id']} is not in its store {store_path}")
        data = RunData(record)
        for member, gen, epoch, split, metric, value in store.epoch_metrics(record.id):
            data.curves[(member, split, metric)].append((gen, epoch, value))
        for member, gen, metric, value in store.generation_metrics(record.id):
            data.generations[member][gen][metric] = value
    return data


def list_runs(store_path: str | Path | None = None) -> tuple[list[str], list[list], list[dict]]:
    """(headers, rows, JSON records) of every run in the store."""
    with Store(store_path, create=False) as store:
        records = store.runs()
        headers = ["id", "status", "created", "data", "model", "method", "seed", "gens x epochs", "final top1",
                   "dir"]
        rows, out = [], []
        for r in records:
            finals = {}
            for member, gen, epoch, split, metric, value in store.epoch_metrics(r.id):
                if split == "test" and metric == "top1":
                    finals[member] = value
            main = finals.get("model", next(iter(finals.values()), None)) if finals else None
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
            shape = f"{r.config.get('generations')} x {r.config.get('epochs')}"
            rows.append([r.id, r.status, created, r.data, r.model, r.method, r.seed, shape,
                         "-" if main is None else f"{100 * main:.2f}", r.run_dir])
            out.append({"id": r.id, "status": r.status, "created": r.created, "run_dir": r.run_dir,
                        "data": r.data, "model": r.model, "method": r.method, "seed": r.seed,
                        "final_top1": finals, "config": r.config})
    return headers, rows, out


def _group(runs: list[RunData]) -> dict[str, list[RunData]]:
    groups: dict[str, list[RunData]] = {}
    for r in runs:
        groups.setdefault(r.record.group_key, []).append(r)
    return groups


def _labels(groups: dict[str, list[RunData]]) -> dict[str, str]:
    """A short label per group from the configuration keys that differ between groups."""
    configs = {k: g[0].config for k, g in groups.items()}
    keys = sorted({k for c in configs.values() for k in c} - _LABEL_SKIP)
    varying = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs.values()}) > 1]
    for named, options in (("method", "method_options"), ("model", "model_options"), ("data", "data_options")):
        if named in varying and options in varying:  # the options follow from the name: say it once
            varying.remove(options)
    labels = {}
    for k, c in configs.items():
        parts = [f"{v}={json.dumps(c.get(v), sort_keys=True).strip(chr(34))}" for v in varying]
        labels[k] = ", ".join(parts) if parts else f"{c['method']} / {c['model']} / {c['data']}"
    return labels


def comparison_table(runs: list[RunData]) -> tuple[list[str], list[list]]:
    groups = _group(runs)
    labels = _labels(groups)
    headers = ["runs", "seeds", "data", "model", "method", "gens x epochs", "member", "final test top1",
               "best top1", "final test top5"]
    rows = []
    for key, group in groups.items():
        cfg = group[0].config
        for member in group[0].members():
            finals = [v for r in group if (v := r.final(member)) is not None]
            bests = [b for r in group if (b := r.best(member)) is not None]
            top5 = [v for r in group if (v := r.final(member, metric="top5")) is not None]
            best_text = f"{pm([b[0] for b in bests])} ({bests[0][1]})" if bests else "-"
            rows.append([labels[key], len(group), cfg["data"], cfg["model"], cfg["method"],
                         f"{cfg['generations']} x {cfg['epochs']}", member, pm(finals), best_text, pm(top5)])
    return headers, rows


def generation_table(runs: list[RunData]) -> tuple[list[str], list[list]] | None:
    """Per-generation metrics (mean +- std over seeds) of the groups with more than one generation."""
    groups = {k: g for k, g in _group(runs).items() if g[0].config.get("generations", 1) > 1}
    if not groups:
        return None
    labels = _labels(_group(runs))
    metrics = sorted({m for g in groups.values() for r in g for gens in r.generations.values()
                      for vals in gens.values() for m in vals if m.endswith("top1")})
    headers = ["runs", "member", "generation"] + metrics
    rows = []
    for key, group in groups.items():
        for member in sorted({m for r in group for m in r.generations}):
            n_gen = max(len(r.generations.get(member, {})) for r in group)
            for gen in range(n_gen):
                vals = [pm([r.generations[member][gen][m] for r in group
                            if m in r.generations.get(member, {}).get(gen, {})]) for m in metrics]
                rows.append([labels[key], member, gen + 1] + vals)
    return headers, rows


# generation boundaries: light, behind the curves, one legend entry per axes
BOUNDARY_STYLE = {"color": "0.55", "lw": 0.9, "ls": "-", "alpha": 0.45, "zorder": 0}
BOUNDARY_LABEL = "generation boundary"


def mean_band(ax, x, y, label: str, **style):
    """Draw the mean over seeds (the rows of ``y``) as a line and, with several seeds, ± one sample standard
    deviation as a band of the line's colour. Returns one legend entry, ``(handle, label)``, whose handle is the line
    and its band together (matplotlib draws a tuple of artists as one legend key), so a group is named once."""
    import numpy as np

    y = np.asarray(y, dtype=float)
    mean = y.mean(0)
    line, = ax.plot(x, mean, **style)
    if len(y) < 2:
        return line, f"{label} (1 seed)"
    sd = y.std(0, ddof=1)
    band = ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.15, lw=0)
    return (band, line), f"{label}: mean ± 1 std of {len(y)} seeds"  # the key: the band, the line over it


def generation_boundaries(ax, positions, label: str = BOUNDARY_LABEL):
    """Light vertical lines at ``positions`` (x between the last epoch of a generation and the first of the next);
    returns their one legend entry, or None when there are none."""
    lines = [ax.axvline(x, **BOUNDARY_STYLE) for x in sorted(set(positions))]
    return (lines[0], label) if lines else None


def legend(ax, entries, **kw) -> None:
    """The axes' legend from ``(handle, label)`` entries (None entries skipped), in order."""
    entries = [e for e in entries if e is not None]
    if entries:
        handles, labels = zip(*entries)
        ax.legend(handles, labels, **kw)


def plot_curves(runs: list[RunData], out: Path) -> list[Path]:
    """Test top-1 and training loss against epochs (generations laid end to end), mean ± std per group: one legend
    entry per group (its line and band together), generation boundaries as light vertical lines named once."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    groups = _group(runs)
    labels = _labels(groups)
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    entries: dict[int, list] = {0: [], 1: []}
    boundaries: set[float] = set()
    for key, group in groups.items():
        epochs = group[0].config["epochs"]
        for member in group[0].members():
            for i, split, metric, scale in ((0, "test", "top1", 100.0), (1, "train", "loss", 1.0)):
                series = []
                for r in group:
                    pts = r.curves.get((member, split, metric), [])
                    series.append([(g * epochs + e + 1, v * scale) for g, e, v in pts])
                n = min(len(s) for s in series)
                if n == 0:
                    continue
                x = np.array([p[0] for p in series[0][:n]])
                y = np.array([[p[1] for p in s[:n]] for s in series])
                label = labels[key] + (f" [{member}]" if member != "model" else "")
                entries[i].append(mean_band(axes[i], x, y, label))
        boundaries |= {g * epochs + 0.5 for g in range(1, group[0].config.get("generations", 1))}
    axes[0].set(xlabel="epoch", ylabel="test top-1 (%)", title="test accuracy")
    axes[1].set(xlabel="epoch", ylabel="loss", title="training loss")
    for i, ax in enumerate(axes):  # every method named once; epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        legend(ax, entries[i] + [generation_boundaries(ax, boundaries)], fontsize=8)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path)
    return files


def plot_generations(runs: list[RunData], out: Path) -> list[Path]:
    """Per-generation top-1 metrics (dense ``test_top1``, slim ``slim_*top1`` for KE, ...), mean ± std per group,
    one legend entry each; nothing when no run has more than one generation."""
    groups = {k: g for k, g in _group(runs).items() if g[0].config.get("generations", 1) > 1}
    if not groups:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    labels = _labels(_group(runs))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    entries = []
    for key, group in groups.items():
        for member in sorted({m for r in group for m in r.generations}):
            metrics = sorted({m for r in group for gens in [r.generations.get(member, {})] for vals in gens.values()
                              for m in vals if m.endswith("top1")})
            for metric in metrics:
                n = min(len(r.generations.get(member, {})) for r in group)
                if n == 0:
                    continue
                y = np.array([[r.generations[member][g].get(metric, np.nan) for g in range(n)] for r in group]) * 100
                name = labels[key] + (f" [{member}]" if member != "model" else "") + f" {metric}"
                entries.append(mean_band(ax, np.arange(1, n + 1), y, name, marker="o", ms=3))
    ax.set(xlabel="generation", ylabel="top-1 (%)", title="per generation (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend(ax, entries, fontsize=7)
    fig.tight_layout()
    path = out / "generations.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def write_report(run_dirs: list[Path], out: Path) -> tuple[str, list[Path]]:
    """Print-ready text and the files written (``report.md``, ``curves.png``, and ``generations.png`` when runs
    have several generations) for the given run directories."""
    runs = []
    for d in run_dirs:
        runs.append(load_run(d))  # refuses a missing directory or one that holds no run
    # a run that has not finished an epoch has nothing to show: one line says so (and nothing is written when no
    # run has anything)
    empty = [d for d, r in zip(run_dirs, runs) if not r.curves]
    note = ""
    if empty:
        what = ", ".join(f"{d} ({r.record.status})" for d, r in zip(run_dirs, runs) if not r.curves)
        note = f"no finished epoch yet in {what}: not in the report"
        if len(empty) == len(runs):
            raise CheckpointError(note.replace(": not in the report", "; nothing to report"))
        runs = [r for r in runs if r.curves]
    out.mkdir(parents=True, exist_ok=True)
    headers, rows = comparison_table(runs)
    text = (note + "\n\n" if note else "") + format_table(headers, rows)
    gen = generation_table(runs)
    if gen:
        text += "\n\nper generation (test top-1, mean ± std over seeds)\n\n" + format_table(*gen)
    files = plot_curves(runs, out) + plot_generations(runs, out)
    md = out / "report.md"
    md.write_text("# resprout report\n\n" + text + "\n\n" + "".join(f"![{f.stem}]({f.name})\n" for f in files))
    return text, [md] + files
