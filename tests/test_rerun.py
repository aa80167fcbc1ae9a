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


@pytest.mark.parametrize("recorded", ["fp32", "bf16"])
def test_a_row_trains_again_in_the_precision_it_was_recorded_in(tmp_path, monkeypatch, recorded):
    """Whatever precision=auto resolves to on this machine, the re-run uses the recorded run's precision (and
    threads): its fingerprint leaves the precision out, and another one changes the arithmetic."""
    import resprout.run

    monkeypatch.delenv("RESPROUT_PORTABLE")  # channels_last=auto as on the machine that recorded the row
    old_rows, old_bits = rerun.recorded_run("ke-table2", "CE, 2x epochs", 0)
    monkeypatch.setattr(rerun, "recorded_run", lambda *a, **k: (
        [dict(r, precision=recorded, threads=1) for r in old_rows], old_bits))
    seen = {}

    class Stop(Exception):
        pass

    def fake_train(config, **keys):
        seen.update(keys)
        raise Stop

    monkeypatch.setattr(resprout.run, "train", fake_train)
    with pytest.raises(Stop):
        rerun.rerun("ke-table2", "CE, 2x epochs", 0, None, tmp_path)
    assert seen["precision"] == recorded and seen["threads"] == 1


def test_a_differing_low_precision_row_names_the_cpu_that_trained_it():
    """Which CPU trained a row decides whether a bf16 difference can be the machine's (results/ has a cpu column;
    rows from before it have none)."""
    same = rerun.cpu_note("bf16", "Xeon A", "Xeon A")
    assert same == ("It was recorded on this CPU (Xeon A), so the difference comes from the code or the libraries, "
                    "not from the machine.")
    other = rerun.cpu_note("bf16", "Xeon A", "Xeon B")
    assert "it was recorded on another CPU (Xeon A; this one: Xeon B)" in other
    assert other.endswith("before blaming the code.")
    unknown = rerun.cpu_note("bf16", None, "Xeon B")
    assert "results/ does not record the CPU that trained this run" in unknown
