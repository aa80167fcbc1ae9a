"""A run killed with SIGKILL (or stopped with Ctrl-C) and resumed ends exactly like a run never stopped.

The run is a Knowledge Evolution run with label smoothing over two generations, so kills also land between
generations, around the re-initialization of the reset hypothesis.

Real processes, real signals: the training command runs in a subprocess that is killed at arbitrary moments,
including inside epochs (the run checkpoints every few steps here, so kills land between, during and right after
checkpoint writes).

Both tests run in fp32 and in bf16 (autocast; emulated and slow on a CPU without native bf16, hence the shorter
bf16 run): a resume is bit-identical within a precision.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from resprout.engine.checkpoint import load_file
from tests.conftest import PYTHON, cli_env
from tests.test_trainer import assert_same_weights, metric_rows

KEYS = ["data=digits", "model=cnn", "width=0.5", "method=ke+ls", "generations=2", "batch_size=32", "seed=3",
        "threads=1", "checkpoint_minutes=0.003", "augment=crop"]
PRECISIONS = {"fp32": ["precision=fp32", "epochs=3"], "bf16": ["precision=bf16", "epochs=2"]}


@pytest.fixture(scope="module", params=sorted(PRECISIONS))
def keys(request) -> list[str]:
    return KEYS + PRECISIONS[request.param]


def start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "resprout", *args], env=cli_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"finished before {path.name} appeared: {proc.stderr.read()}"
        assert time.monotonic() - t0 < timeout
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, keys):
    tmp = tmp_path_factory.mktemp("reference")
    proc = start(["train", *keys, "--out", str(tmp / "run"), "--quiet"], tmp)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return tmp / "run"


def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path, keys, reference):
    run = tmp_path / "run"
    rng = random.Random(0)
    kills = 0
    proc = start(["train", *keys, "--out", str(run), "--quiet"], tmp_path)
    for _ in range(3):
        wait_for(run / "checkpoint.pt", proc)
        time.sleep(rng.uniform(0.05, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += proc.returncode == -signal.SIGKILL
        proc = start(["resume", str(run), "--quiet"], tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert kills >= 2, "the run finished before it could be killed: make it longer"
    assert load_file(run / "checkpoint.pt")["position"]["finished"]
    assert_same_weights(load_file(reference / "checkpoint.pt")["members"],
                        load_file(run / "checkpoint.pt")["members"])
    assert metric_rows(reference) == metric_rows(run)
    assert not list(run.glob(".*.tmp-*"))  # no temporary files left behind


def test_ctrl_c_checkpoints_exits_130_and_resume_matches(tmp_path, keys, reference):
    run = tmp_path / "run"
    proc = start(["train", *keys, "--out", str(run)], tmp_path)
    wait_for(run / "checkpoint.pt", proc)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("resprout: error: interrupted at generation 1") and f"resprout resume {run}" in last
    assert "Traceback" not in err
    state = load_file(run / "checkpoint.pt")
    assert not state["position"]["finished"]
    proc = start(["resume", str(run), "--quiet"], tmp_path)
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert_same_weights(load_file(reference / "checkpoint.pt")["members"], load_file(run / "checkpoint.pt")["members"])
    assert metric_rows(reference) == metric_rows(run)
    assert torch.load(run / "best-model.pt", weights_only=True)["format"] == "resprout.weights"
