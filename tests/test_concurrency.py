"""Parallel runs never share a directory, and a run directory has one trainer at a time (issue: runs that never
collide). Real processes started at the same moment."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from resprout.engine.checkpoint import load_file
from resprout.engine.store import Store
from tests.conftest import HANG_GUARD, PYTHON, cli_env, stopped
from tests.test_run_safety import cli_keys

pytestmark = pytest.mark.slow  # every test starts processes


def start(args, tmp_path, fault=None):
    return subprocess.Popen([PYTHON, "-m", "resprout", *args, "--quiet"], env=cli_env(tmp_path, fault),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_parallel_runs_with_the_same_settings_each_get_their_own_consistent_directory(tmp_path):
    lrs = ["0.1", "0.05", "0.02", "0.01"]
    procs = [start(["train", *cli_keys(epochs=1, seed=11), f"lr={lr}"], tmp_path) for lr in lrs]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    dirs = sorted(d for d in (tmp_path / "runs").iterdir() if d.is_dir())
    assert len(dirs) == len(lrs)
    seen = set()
    for d in dirs:
        info = json.loads((d / "run.json").read_text())
        ck = load_file(d / "checkpoint.pt")
        assert ck["run_id"] == info["run_id"] and ck["config"]["lr"] == info["config"]["lr"]
        lines = (d / "train.log").read_text().splitlines()
        assert len(lines) == 1  # one epoch of one run: not interleaved with another run's log
        seen.add(info["config"]["lr"])
    assert seen == {float(lr) for lr in lrs}
    with Store(tmp_path / "runs" / "resprout.db") as store:
        assert sorted(r.status for r in store.runs()) == ["finished"] * len(lrs)


def test_two_resumes_of_one_directory_one_trains_the_other_is_refused(tmp_path):
    """Both resumes start at once; whichever takes the lock stops itself after one step (RESPROUT_FAULT
    pause-after-step:1), still holding it, so the other meets a live owner whenever it looks, and is refused.
    Then the owner is continued and finishes the run."""
    out2 = tmp_path / "run2"
    keys = cli_keys(epochs=2)
    first = start(["train", *keys, "--out", str(out2)], tmp_path, "interrupt-after-step:3")
    first.communicate(timeout=HANG_GUARD)
    assert first.returncode == 130
    a, b = (start(["resume", str(out2)], tmp_path, "pause-after-step:1") for _ in range(2))
    owner, other = (a, b) if stopped(a) else (b, a)
    assert not stopped(other) and stopped(owner)  # the other ended: refused, without training a step
    refused = other.communicate(timeout=HANG_GUARD)
    owner.send_signal(signal.SIGCONT)
    done = owner.communicate(timeout=HANG_GUARD)
    results = [done + (owner.returncode,), refused + (other.returncode,)]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], results
    assert "in use by process" in refused[1] and refused[1].count("\n") == 1 and "Traceback" not in refused[1]
    assert f"process {owner.pid}" in refused[1]
    assert load_file(out2 / "checkpoint.pt")["position"]["finished"]


def _open_store_and_register(path: str, start, results) -> None:
    import os

    start.wait()  # a barrier: all three go on together
    try:
        with Store(path) as store:
            store.register_run(str(os.getpid()), "d", {"seed": 0}, "h", "g", {})
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - the test reports whatever went wrong
        results.put(repr(e))


def test_processes_that_create_one_new_store_at_once_all_succeed(tmp_path):
    # `compare jobs=2` starts two runs on a store that does not exist yet: without one transaction around the
    # schema, about a third of such races ended in "database is locked" or a half-made schema
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # the children open their own connections
    for i in range(20):
        path = str(tmp_path / f"s{i}.db")
        start, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_open_store_and_register, args=(path, start, results)) for _ in range(3)]
        for p in procs:
            p.start()
        answers = [results.get(timeout=HANG_GUARD) for _ in procs]  # a hang guard only
        for p in procs:
            p.join()
        assert answers == ["ok"] * 3
        with Store(path) as store:
            assert len(store.runs()) == 3
