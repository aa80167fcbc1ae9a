"""Report plots: whole-number epoch and generation ticks, and a legend entry for every line and every band."""

from __future__ import annotations

import pytest

from resprout.analysis.report import write_report
from resprout.run import train
from tests.conftest import synthetic


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    dirs = []
    for seed in (0, 1):
        train(out=tmp / f"s{seed}", **synthetic(seed=seed, generations=2, epochs=2))
        dirs.append(tmp / f"s{seed}")
    return dirs


def test_every_line_and_band_is_in_the_legend_and_ticks_are_whole(runs, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    _, files = write_report(runs, tmp_path / "report")
    assert {"curves.png", "generations.png"} <= {f.name for f in files}
    axes = [ax for fig in figures for ax in fig.axes]
    assert len(axes) == 3
    for ax in axes:
        ax.figure.canvas.draw()
        drawn = [a for a in ax.lines + list(ax.collections)]
        legend = {t.get_text() for t in ax.get_legend().get_texts()}
        assert drawn and all(a.get_label() in legend for a in drawn), [a.get_label() for a in drawn]
        assert any("± 1 std" in t for t in legend)  # the seeds' band is named
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    curves = [ax for ax in axes if ax.get_xlabel() == "epoch"]
    assert all("generation boundary" in {t.get_text() for t in ax.get_legend().get_texts()} for ax in curves)
    for fig in figures:
        fig.clf()
