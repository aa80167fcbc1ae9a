"""Plots looked at: one legend entry per method (its mean line and its ±1 std band drawn as one key), generation
boundaries as light vertical lines named once, the equal-compute baseline in its own style, whole-number ticks.
The figures are caught before they are closed, their legends counted, their lines compared with means and standard
deviations computed here, and the saved PNG read back pixel by pixel where the boundaries must be."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from PIL import Image

from resprout.analysis import comparison
from resprout.analysis.comparison import Row
from resprout.analysis.report import BOUNDARY_STYLE, RunData, write_report
from resprout.engine.store import RunRecord
from resprout.run import train
from tests.conftest import synthetic


@pytest.fixture
def caught(monkeypatch):
    """The figures the code closes (kept open), and the (handles, labels) of every legend it makes."""
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    figures, legends = [], []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    real = Axes.legend

    def spy(ax, handles, labels, **kw):
        legends.append((ax, list(handles), list(labels)))
        return real(ax, handles, labels, **kw)

    monkeypatch.setattr(Axes, "legend", spy)
    yield figures, legends
    for fig in figures:
        fig.clf()


def _is_mean_and_band(handle, x: list[float], runs: list[list[float]]) -> None:
    """``handle`` is (band, line) of one colour: the line is the mean of ``runs`` and the band mean ± sample std."""
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_rgb
    from matplotlib.lines import Line2D

    band, line = handle
    assert isinstance(band, PolyCollection) and isinstance(line, Line2D)
    assert to_rgb(band.get_facecolor()[0]) == pytest.approx(to_rgb(line.get_color()))
    mean = [statistics.mean(v) for v in zip(*runs)]
    sd = [statistics.stdev(v) for v in zip(*runs)]
    assert list(line.get_xdata()) == x and list(line.get_ydata()) == pytest.approx(mean)
    verts = band.get_paths()[0].vertices  # the polygon's outline: at each x, its lowest and highest point
    assert [verts[verts[:, 0] == v, 1].min() for v in x] == pytest.approx([m - s for m, s in zip(mean, sd)])
    assert [verts[verts[:, 0] == v, 1].max() for v in x] == pytest.approx([m + s for m, s in zip(mean, sd)])


# -- the comparison plot ----------------------------------------------------------------------------------------------
def _run(method: str, seed: int, generations: int, epochs: int, curve: list[float]) -> RunData:
    """A run as the store gives it back: its test top-1 (fractions) at every epoch of every generation."""
    record = RunRecord(f"{method}-{seed}", "", 0.0, 0.0, "finished", "digits", "cnn", method, seed,
                       {"epochs": epochs, "generations": generations, "method": method}, "", method, {})
    run = RunData(record)
    run.curves[("model", "test", "top1")] = [(i // epochs, i % epochs, v) for i, v in enumerate(curve)]
    return run


CURVES = {  # method, (generations, epochs), baseline, the test top-1 of two seeds at each of six epochs
    "ce": ((1, 6), True, [[.50, .60, .70, .75, .80, .82], [.52, .63, .69, .77, .79, .84]]),
    "ke": ((3, 2), False, [[.40, .62, .55, .71, .66, .80], [.44, .60, .58, .70, .69, .78]]),
    "graft": ((1, 6), False, [[.48, .61, .72, .74, .81, .83], [.50, .59, .70, .78, .80, .85]]),
}


def _rows() -> list[Row]:
    rows = []
    for method, ((g, e), baseline, curves) in CURVES.items():
        row = Row(method, g, e, baseline)
        for seed, curve in enumerate(curves):
            row.runs.append(_run(method, seed, g, e, curve))
            row.seeds.append(seed)
        rows.append(row)
    return rows


def test_compare_plot_names_each_method_once_and_marks_generations(caught, tmp_path):
    figures, legends = caught
    path = comparison.plot(_rows(), tmp_path / "cmp.png", title="digits / cnn")
    (fig,) = figures
    (ax,) = fig.axes
    # the legend as drawn: one entry per method and one for the boundaries, no more
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["ce (1 x 6) equal-compute baseline: mean ± 1 std of 2 seeds",
                     "ke (3 x 2): mean ± 1 std of 2 seeds", "graft (1 x 6): mean ± 1 std of 2 seeds",
                     "generation boundary (ke)"]
    (_, handles, labels), = legends
    assert labels == texts
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    for handle, (_, baseline, curves) in zip(handles, CURVES.values()):
        _is_mean_and_band(handle, x, [[100 * v for v in c] for c in curves])
        line = handle[1]
        assert (line.get_linestyle(), line.get_linewidth()) == (("--", 2.2) if baseline else ("-", 1.5))
    # every curve and band drawn is one of the legend's keys; the boundaries are the vertical lines at 2.5 and 4.5
    keyed = {id(a) for h in handles[:3] for a in h}
    assert {id(a) for a in ax.collections} | {id(a) for a in ax.lines[:3]} == keyed
    verticals = ax.lines[3:]
    assert sorted(line.get_xdata()[0] for line in verticals) == [2.5, 4.5]
    assert handles[3] is verticals[0] and all(v.get_label().startswith("_") for v in verticals)
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    # the image: at the top of the axes (above every curve and band) the boundary columns are grey, a column a
    # quarter epoch away is the white background
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    scale = image.shape[1] / fig.bbox.width  # saved at another dpi than the figure's own

    def pixel(x: float, y: float) -> np.ndarray:
        px, py = ax.transData.transform((x, y)) * scale
        return image[image.shape[0] - int(round(py)), int(round(px))]

    top = ax.get_ylim()[1] - 0.01 * (ax.get_ylim()[1] - ax.get_ylim()[0])  # inside the axes, above every band
    for boundary in (2.5, 4.5):
        assert pixel(boundary - 0.25, top).tolist() == [255, 255, 255]
        at = pixel(boundary, top)
        assert 150 < at.mean() < 250 and np.ptp(at) < 10, at  # light grey: the boundary's colour, not a curve's
    assert BOUNDARY_STYLE["zorder"] == 0  # behind the curves


def test_compare_plot_with_one_seed_and_no_generations(caught, tmp_path):
    figures, legends = caught
    row = Row("ce", 1, 4, True, [_run("ce", 0, 1, 4, [.5, .6, .7, .8])], [0])
    comparison.plot([row], tmp_path / "one.png")
    (_, handles, labels), = legends
    assert labels == ["ce (1 x 4) equal-compute baseline (1 seed)"]
    assert not figures[0].axes[0].collections  # no band from one seed, and no boundary
    assert len(figures[0].axes[0].lines) == 1


def test_compare_table_reports_peer_1_of_a_run_without_model():
    """Grafting and mutual learning replace `model` by peer_1..peer_K: the row reports peer_1 (the peer with the
    run's seed) and says so, instead of an empty row."""
    from resprout.analysis.comparison import table

    rows = _rows()
    for run in rows[2].runs:  # graft: its curves under peer_1 and peer_2, none under model
        curve = run.curves.pop(("model", "test", "top1"))
        run.curves[("peer_1", "test", "top1")] = curve
        run.curves[("peer_2", "test", "top1")] = [(g, e, 0.1) for g, e, _ in curve]
    text = table(rows, {"test": 359})
    line = next(line for line in text.splitlines() if line.startswith("| graft"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    last = [c[-1] * 100 for c in CURVES["graft"][2]]
    assert cells[0] == "graft [peer_1]"
    assert cells[5] == f"{statistics.mean(last):.2f} ± {statistics.stdev(last):.2f}"


# -- the report plots (real runs) -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    dirs = []
    for seed in (0, 1):
        train(out=tmp / f"s{seed}", **synthetic(seed=seed, generations=2, epochs=2))
        dirs.append(tmp / f"s{seed}")
    return dirs


def test_report_plots_name_each_group_once_and_ticks_are_whole(runs, caught, tmp_path):
    figures, legends = caught
    _, files = write_report(runs, tmp_path / "report")
    assert {"curves.png", "generations.png"} <= {f.name for f in files}
    axes = [ax for fig in figures for ax in fig.axes]
    assert len(axes) == 3 and len(legends) == 3
    for ax, handles, labels in legends:
        ax.figure.canvas.draw()
        assert [t.get_text() for t in ax.get_legend().get_texts()] == labels
        keyed = {id(a) for h in handles for a in (h if isinstance(h, tuple) else (h,))}
        assert {id(a) for a in ax.lines + list(ax.collections)} == keyed  # every curve, band and boundary: a key
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    curves = [(ax, labels) for ax, _, labels in legends if ax.get_xlabel() == "epoch"]
    assert len(curves) == 2
    for ax, labels in curves:  # one group of two seeds, and the boundary between its two generations, once
        assert len(labels) == 2 and labels[1] == "generation boundary"
        assert labels[0].endswith(": mean ± 1 std of 2 seeds")
    (_, gen_labels), = [(ax, labels) for ax, _, labels in legends if ax.get_xlabel() == "generation"]
    assert all(label.endswith(": mean ± 1 std of 2 seeds") for label in gen_labels)
    assert len(gen_labels) == len(set(gen_labels)) >= 1
