"""``resprout compare``: the table against the runs' own stored results, reuse, an interrupted grid that continues,
jobs=2 against jobs=1, and refusals that write nothing."""

import json
import os
import select
import signal
import sqlite3
import statistics
import subprocess
from pathlib import Path

import pytest
from torch import nn

from resprout.cli import main
from resprout.compare import compare
from resprout.compare.grid import build_grid
from resprout.models.registry import register_model
from tests.conftest import HANG_GUARD, PYTHON, cli_env, read_until

# the contract's grid (2 methods x 2 seeds, epochs=2 generations=2 is 4 epochs a run), on a digits subset
GRID = ["method=ce,ke", "seeds=0,1", "data=digits", "per_class=30", "model=cnn", "epochs=1", "generations=2",
        "threads=1"]


def body(result: dict) -> str:
    """The tables of a result without the caption (which names jobs and threads)."""
    return result["table"].split("\n", 2)[2]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "ref"
    return out, compare(GRID, out)


def stored(out: Path) -> dict[str, list[tuple]]:
    """Per group (run directory name without the seed): (last, best, per-generation last) test top-1 of every
    run, read with plain sqlite3 from the store its run.json names."""
    groups: dict[str, list[tuple]] = {}
    for d in sorted((out / "runs").iterdir()):
        info = json.loads((d / "run.json").read_text())
        con = sqlite3.connect(info["store"])
        curve = [v for (v,) in con.execute(
            "SELECT value FROM epoch_metrics WHERE run_id=? AND member='model' AND split='test' AND metric='top1' "
            "ORDER BY generation, epoch", (info["run_id"],))]
        gens = [v for (v,) in con.execute(
            "SELECT value FROM generation_metrics WHERE run_id=? AND member='model' AND metric='test_top1' "
            "ORDER BY generation", (info["run_id"],))]
        con.close()
        groups.setdefault(d.name.rsplit("-s", 1)[0], []).append((curve[-1], max(curve), gens))
    return groups


def text(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


@pytest.mark.slow
def test_table_is_mean_and_std_of_the_stored_results(reference):
    out, result = reference
    groups = stored(out)
    assert sorted(groups) == ["ce-1x2", "ke-2x1"]  # equal budget: ce trains E x G epochs, ke G x E
    lines = result["table"].splitlines()
    for group, label in (("ce-1x2", "**ce** (equal-compute baseline)"), ("ke-2x1", "ke ")):
        runs = groups[group]
        assert len(runs) == 2
        row = next(line for line in lines if line.startswith(f"| {label}") and "|" in line[3:])
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[5] == text([r[0] for r in runs])  # last top-1
        assert cells[6] == text([r[1] for r in runs])  # best top-1
        assert cells[4] == "359"  # digits' test split
    ke = groups["ke-2x1"]
    n_row = next(line for line in lines if line.startswith("| ke ") and line.count("±") == 2 and "x" not in line)
    assert [c.strip() for c in n_row.strip("|").split("|")][1:] == [text([r[2][g] for r in ke]) for g in (0, 1)]
    png = out / "comparison.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "comparison.md").read_text().startswith(result["table"].split("\n")[0])


@pytest.mark.slow
def test_a_second_invocation_trains_nothing(reference, capsys):
    out, result = reference
    files = sorted((out / "runs").glob("*/checkpoint.pt"))
    before = {f: f.stat().st_mtime_ns for f in files}
    con = sqlite3.connect(out / "resprout.db")
    rows = con.execute("SELECT COUNT(*) FROM epoch_metrics").fetchone()
    con.close()
    again = compare(GRID, out)
    assert body(again) == body(result)
    assert {f: f.stat().st_mtime_ns for f in files} == before and len(files) == 4
    con = sqlite3.connect(out / "resprout.db")
    assert con.execute("SELECT COUNT(*) FROM epoch_metrics").fetchone() == rows
    con.close()
    assert "4 finished already (reused), 0 to run" in capsys.readouterr().err


def _start(out: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "resprout", "compare", *GRID, *extra, "--out", str(out)],
                            env=cli_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _processes_of(tmp_path: Path) -> list[int]:
    """Live processes started with this test's environment (the compare process and its workers)."""
    mark = f"RESPROUT_STORE={tmp_path}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if mark in (d / "environ").read_bytes() and "Z" not in (d / "stat").read_text().split(")")[1][:3]:
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_a_killed_grid_continues_to_the_same_table(reference, tmp_path):
    out = tmp_path / "killed"
    proc = _start(out, tmp_path, "jobs=2")
    read_until(proc, " ep 1/")  # mid-grid: the workers are training
    workers = _processes_of(tmp_path)
    assert workers and proc.pid in workers
    proc.kill()  # SIGKILL: the comparison itself cannot clean up; its workers stop at a checkpoint on their own
    proc.wait()
    proc.stderr.close()
    for pid in workers:  # each ends (its pidfd turns readable); one that outlived its comparison would hang here
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            assert select.select([fd], [], [], HANG_GUARD)[0], f"worker {pid} outlived its killed comparison"
        finally:
            os.close(fd)
    assert not _processes_of(tmp_path)
    assert not (out / "comparison.md").exists()
    result = compare(GRID, out)
    assert body(result) == body(reference[1])


@pytest.mark.slow
def test_ctrl_c_stops_at_a_checkpoint_and_the_same_command_continues(reference, tmp_path):
    out = tmp_path / "stopped"
    proc = _start(out, tmp_path)
    err = read_until(proc, "[1/4 done")  # mid-grid: one run finished, three to go
    proc.send_signal(signal.SIGINT)
    err += proc.communicate(timeout=HANG_GUARD)[1].decode(errors="replace")  # a hang guard only
    assert proc.returncode == 130
    assert "run the same command again to continue" in err.splitlines()[-1]
    assert not (out / "comparison.md").exists()
    result = compare(GRID, out)
    assert body(result) == body(reference[1])


@pytest.mark.slow
def test_two_jobs_give_the_same_table_as_one(reference, tmp_path, capsys):
    result = compare(GRID + ["jobs=2"], tmp_path / "two")
    assert body(result) == body(reference[1])
    assert "jobs=2, 1 thread(s) each" in capsys.readouterr().err


def _mlp(*, in_channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))


@pytest.fixture
def mlp_model():
    """A convolution-free model, registered for this test only (tests.conftest.scoped_registries)."""
    register_model("test-compare-mlp", options={})(_mlp)


@pytest.mark.parametrize("args, says", [
    (["method=ce,repr", "model=test-compare-mlp"], "method=repr (1 x 1 epochs) cannot run here: method=repr needs a "
                                                   "convolutional network"),
    (["method=ce,ban", "generations=1"], "method=ban needs generations >= 2"),
    (["method=ce,nosuch"], "unknown method 'nosuch'"),
    (["method=ce,ke", "ls.smoothing=0.2"], "options ls.* given but no method of the comparison uses 'ls'"),
    (["method=ce", "budget=double"], "bad value for budget: 'double' (allowed: equal, per-method)"),
    (["method=ce", "seeds=0,0"], "seeds"),
    (["method=ce", "baseline=ke"], "bad value for baseline: 'ke' uses generations"),
])
def test_refusals_exit_2_with_one_line_and_write_nothing(args, says, tmp_path, capsys, mlp_model):
    out = tmp_path / "refused"
    code = main(["compare", *args, "data=digits", "epochs=1", "threads=1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and says in err, err
    assert not out.exists()


@pytest.mark.slow
def test_a_changed_configuration_in_the_same_directory_is_refused(reference, capsys):
    out, _ = reference
    stamp = (out / "compare.json").stat().st_mtime_ns
    assert main(["compare", *GRID[:-2], "generations=2", "lr=0.05", "threads=1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a run with another configuration (lr: 0.1 vs 0.05)" in err
    assert (out / "compare.json").stat().st_mtime_ns == stamp


def test_budgets():
    equal = build_grid(["method=ce,ke,dsd", "epochs=3", "generations=4"])
    assert {(c.method, c.generations, c.epochs, c.baseline) for c in equal.cells} == {
        ("ce", 1, 12, True), ("ke", 4, 3, False), ("dsd", 1, 12, False)}
    per = build_grid(["method=ce,ke,repr", "epochs=3", "generations=4", "budget=per-method", "seeds=0,1"])
    assert {(c.method, c.generations, c.epochs, c.baseline) for c in per.cells} == {
        ("ce", 1, 3, False), ("ke", 4, 3, False), ("repr", 1, 3, False), ("ce", 1, 12, True)}
    assert len(per.cells) == 8
    phased = build_grid(["method=dsd,repr", "epochs=3", "generations=3", "dsd.phases=generations",
                         "repr.schedule=generations", "baseline=none"])
    assert {(c.method, c.generations, c.epochs) for c in phased.cells} == {("dsd", 3, 3), ("repr", 3, 3)}
    assert build_grid(["method=ce,ke", "jobs=2", "threads=4"]).threads == 2


@pytest.mark.slow
def test_runs_in_two_processes_share_one_store_without_losing_rows(tmp_path):
    """The workers of jobs=N share OUT/resprout.db. Opening a second Store in a process that holds a live one (a
    leaked trainer store, a report) must not drop that process's SQLite locks: if it did, another process closing
    its store would delete the WAL under the live connection, and rows written after that would be lost."""
    from resprout.engine.store import Store

    db = tmp_path / "shared.db"
    live = Store(db)
    live.register_run("first", "/a", {"data": "digits"}, "h1", "g1", {})
    Store(db).close()  # a second store of the same file in this process
    subprocess.run([PYTHON, "-c", f"from resprout.engine.store import Store; Store({str(db)!r}).close()"],
                   env=cli_env(tmp_path), check=True)  # another process opens and closes the store
    assert Path(f"{db}-wal").exists()  # the live connection's WAL is still there
    live.register_run("second", "/b", {"data": "digits"}, "h2", "g2", {})
    with Store(db) as fresh:
        assert [r.id for r in fresh.runs()] == ["first", "second"]
    live.close()
