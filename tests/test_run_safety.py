"""Run directories are exclusive, refusals change nothing, messages tell the truth, nothing is overwritten."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import resprout
from resprout.cli import main
from resprout.config import make_config
from resprout.engine.rundir import LOCK_FILE
from resprout.engine.store import Store
from resprout.run import _default_run_dir
from tests.conftest import PYTHON, synthetic


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


def one_line_error(capsys, code, expected_code=2) -> str:
    err = capsys.readouterr().err
    assert code == expected_code, err
    assert err.count("\n") == 1 and err.startswith("resprout: error: ") and "Traceback" not in err, err
    return err


def cli_keys(**kw) -> list[str]:
    keys = synthetic(**kw)
    opts = keys.pop("data_options")
    return [f"{k}={v}" for k, v in keys.items()] + [f"data.{k}={v}" for k, v in opts.items()]


def test_default_run_dirs_are_never_shared(tmp_path):
    cfg = make_config(synthetic())
    store = tmp_path / "runs" / "resprout.db"
    dirs = {_default_run_dir(cfg, store) for _ in range(20)}
    assert len(dirs) == 20 and all(d.is_dir() for d in dirs)


@pytest.mark.slow
def test_a_locked_run_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    out = tmp_path / "r"
    resprout.train(**synthetic(epochs=1), out=out)
    # a live process until the test ends it (it waits for its stdin to close): no clock decides how long it lives
    holder = subprocess.Popen([PYTHON, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        (out / LOCK_FILE).write_text(json.dumps({"pid": holder.pid}))
        before = snapshot(out)
        err = one_line_error(capsys, main(["resume", str(out), "--quiet"]))
        assert str(holder.pid) in err
        err = one_line_error(capsys, main(["train", *cli_keys(epochs=1), "--out", str(out), "--quiet"]))
        assert str(holder.pid) in err
        assert snapshot(out) == before
    finally:
        holder.stdin.close()
        holder.wait()
    # the holder is gone: its lock is stale and taken over; released at the end
    assert main(["resume", str(out), "--quiet"]) == 0
    assert not (out / LOCK_FILE).exists()


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    resprout.train(**synthetic(epochs=1), out=a)
    resprout.train(**synthetic(epochs=1), out=b)
    shutil.copy(b / "checkpoint.pt", a / "checkpoint.pt")
    before = snapshot(a)
    store = Store(tmp_path / "runs" / "resprout.db")
    run_id = json.loads((a / "run.json").read_text())["run_id"]
    status = store.run(run_id).status
    err = one_line_error(capsys, main(["resume", str(a), "--quiet"]))
    assert "belongs to run" in err
    assert snapshot(a) == before and store.run(run_id).status == status


def test_a_run_refused_in_setup_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    from resprout import run

    def refuse(*a, **k):
        raise resprout.errors.ConfigError("method x refuses this model")

    monkeypatch.setattr(run, "Trainer", refuse)
    out = tmp_path / "new"
    one_line_error(capsys, main(["train", *cli_keys(epochs=1), "--out", str(out), "--quiet"]))
    assert not out.exists()
    one_line_error(capsys, main(["train", *cli_keys(epochs=1), "--quiet"]))
    assert [p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()] == []
    assert all(r.status == "failed" for r in Store(tmp_path / "runs" / "resprout.db").runs())


def test_resume_with_changed_optimizer_keys_is_recorded(tmp_path, capsys):
    out = tmp_path / "r"
    resprout.train(**synthetic(epochs=1), out=out)
    before = snapshot(out)
    err = one_line_error(capsys, main(["resume", str(out), "epochs=3", "--quiet"]))
    assert "lr" in err and "epochs" in err
    assert snapshot(out) == before
    assert main(["resume", str(out), "lr=0.01", "momentum=0.5", "progress=none", "--quiet"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["lr"] == 0.01 and info["config"]["momentum"] == 0.5
    (hist,) = info["config_history"]
    assert hist["changed"]["lr"] == [0.05, 0.01] and hist["at"] is not None
    assert main(["resume", str(out), "--quiet"]) == 0  # the checkpoint still fits the changed configuration


def test_resume_with_a_new_lr_continues_training(tmp_path):
    out = tmp_path / "r"
    resprout.train(**synthetic(epochs=1), out=out)
    res = resprout.resume(out, lr=0.02, optimizer="adam")  # another optimizer kind: fresh optimizer state
    assert res["status"] == "finished"
    assert json.loads((out / "run.json").read_text())["config"]["optimizer"] == "adam"


def test_runs_shows_a_run_whose_process_is_gone_as_stopped(tmp_path, capsys):
    res = resprout.train(**synthetic(epochs=1), out=tmp_path / "r")
    Store(tmp_path / "runs" / "resprout.db").set_status(res["run_id"], "running")
    capsys.readouterr()
    assert main(["runs", "--json"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)["runs"]
    assert rec["status"] == "stopped"


def test_slim_and_report_never_overwrite(tmp_path, capsys):
    out = tmp_path / "r"
    resprout.train(**synthetic(epochs=1), out=out)
    before = snapshot(out)
    for name in ("checkpoint.pt", "run.json", "best-model.pt"):
        err = one_line_error(capsys, main(["slim", str(out), "--out", str(out / name), "--force"]))
        assert "own files" in err
    other = tmp_path / "mine.pt2"
    other.write_bytes(b"precious")
    err = one_line_error(capsys, main(["slim", str(out), "--out", str(other)]))
    assert "--force" in err and other.read_bytes() == b"precious"
    assert snapshot(out) == before

    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    err = one_line_error(capsys, main(["report", str(out), "--out", str(afile)]))
    assert "existing file" in err and afile.read_text() == "mine"
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "report.md").write_text("my own notes")
    one_line_error(capsys, main(["report", str(out), "--out", str(rep)]))
    assert (rep / "report.md").read_text() == "my own notes"
    rep2 = tmp_path / "rep2"
    assert main(["report", str(out), "--out", str(rep2)]) == 0
    assert main(["report", str(out), "--out", str(rep2)]) == 0  # its own files may be rewritten


@pytest.mark.slow
def test_sigterm_in_start_up_exits_130_with_one_line(tmp_path):
    from tests.conftest import cli_env

    code = ("import os, signal, sys; from resprout.cli import main; "
            "import resprout.cli as c; orig = c.build_parser\n"
            "def slow():\n    os.kill(os.getpid(), signal.SIGTERM); return orig()\n"
            "c.build_parser = slow; sys.exit(main(['keys']))")
    proc = subprocess.run([PYTHON, "-c", code], env=cli_env(tmp_path), capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, check=False)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.count("\n") == 1 and "nothing was saved" in proc.stderr and "Traceback" not in proc.stderr


def test_a_divergence_before_the_first_checkpoint_says_nothing_was_kept_and_resume_restarts(tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["train", *cli_keys(epochs=1, lr=1e30), "--out", str(out), "--quiet"])
    err = one_line_error(capsys, code, expected_code=3)
    assert "no checkpoint was saved yet" in err and "last good checkpoint" not in err
    assert f"resprout resume {out} lr=" in err
    assert main(["resume", str(out), "lr=0.05", "--quiet"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["lr"] == 0.05 and info["config_history"][0]["at"] is None
