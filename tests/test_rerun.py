"""benchmarks.rerun: the comparison of a recorded reproduction run with its re-run, and its refusals."""

from __future__ import annotations

import pytest

from benchmarks import rerun
from resprout.errors import ConfigError


def rows(*top1):
    return [{"generation": g, "top1": t} for g, t in enumerate(top1, start=1)]


def bits(*packed):
    return [{"generation": g, "bits": b, "labels": "L"} for g, b in enumerate(packed, start=1)]


def test_identical_runs_have_no_difference_and_each_change_is_one_line():
    assert rerun.compare_runs(rows(0.5, 0.6), bits("AA", "AB"), rows(0.5, 0.6), bits("AA", "AB")) == []
    assert rerun.compare_runs(rows(0.5, 0.6), bits("AA", "AB"), rows(0.5, 0.61), bits("AA", "AB")) == [
        "generation 2: top-1 0.6 recorded, 0.61 now"]
    # the same top-1 with other images right and wrong is a difference too
    assert rerun.compare_runs(rows(0.5), bits("AA"), rows(0.5), bits("AC")) == [
        "generation 1: the per-image correctness differs"]
    assert rerun.compare_runs(rows(0.5), [], rows(0.5), []) == [
        "the recorded run has no per-image correctness to compare"]


def test_a_row_without_a_recorded_run_is_refused_naming_what_is_recorded(tmp_path):
    (tmp_path / "t.csv").write_text(",".join(rerun.res.COLUMNS) + "\n")
    with pytest.raises(ConfigError, match=r"results/t.csv has no finished run of row 'x' seed 0; recorded: none"):
        rerun.recorded_run("t", "x", 0, folder=tmp_path)
