"""A run killed with SIGKILL (or stopped with Ctrl-C) and resumed ends exactly like a run never stopped.

The run is a Knowledge Evolution run with label smoothing over two generations, so kills also land between
generations, around the re-initialization of the reset hypothesis.

Real processes, real signals, at exact points: each command gets a deterministic fault (``RESPROUT_FAULT``, see
:class:`resprout.engine.state.Fault`) that makes it SIGKILL, interrupt or stop itself right after its N-th
checkpoint is on disk or right after its N-th step. The points: after the first checkpoint, mid-epoch (after a
mid-epoch checkpoint, and with no checkpoint since the epoch began), between the two generations, and a seeded
random draw of steps that also lands right after epoch ends, while the background writer is writing.

Both tests run in fp32 and in bf16 (autocast; emulated and slow on a CPU without native bf16, hence the shorter
bf16 run): a resume is bit-identical within a precision.
"""

from __future__ import annotations

import random
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from resprout.engine.checkpoint import load_file
from tests.conftest import HANG_GUARD, PYTHON, cli_env, stopped
from tests.test_trainer import assert_same_weights, metric_rows

# checkpoint_minutes=0: checkpoints at epoch and generation ends only, so "the N-th checkpoint" is a fixed point
KEYS = ["data=digits", "model=cnn", "width=0.5", "method=ke+ls", "generations=2", "batch_size=32", "seed=3",
        "threads=1", "checkpoint_minutes=0", "augment=crop"]
PRECISIONS = {"fp32": ["precision=fp32", "epochs=3"], "bf16": ["precision=bf16", "epochs=2"]}


@pytest.fixture(scope="module", params=sorted(PRECISIONS))
def keys(request) -> list[str]:
    return KEYS + PRECISIONS[request.param]


def start(args: list[str], tmp_path: Path, fault: str | None = None) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "resprout", *args], env=cli_env(tmp_path, fault), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run(args: list[str], tmp_path: Path, fault: str | None = None) -> tuple[int, str]:
    """Run a command to its end (or to its fault); its exit code (-9: killed) and stderr."""
    proc = start(args, tmp_path, fault)
    _, err = proc.communicate(timeout=HANG_GUARD)  # a hang guard only
    return proc.returncode, err


def epochs_of(keys: list[str]) -> int:
    return int(next(k for k in keys if k.startswith("epochs="))[len("epochs="):])


def position(run_dir: Path) -> tuple:
    pos = load_file(run_dir / "checkpoint.pt")["position"]
    return pos["generation"], pos["epoch"], pos["step"], pos["started"], pos["finished"]


def assert_same_as(reference: Path, run_dir: Path) -> None:
    assert position(run_dir)[-1]  # finished
    assert_same_weights(load_file(reference / "checkpoint.pt")["members"],
                        load_file(run_dir / "checkpoint.pt")["members"])
    assert metric_rows(reference) == metric_rows(run_dir)
    assert not list(run_dir.glob(".*.tmp-*"))  # no temporary files left behind


@pytest.fixture(scope="module")
def reference(tmp_path_factory, keys):
    tmp = tmp_path_factory.mktemp("reference")
    code, err = run(["train", *keys, "--out", str(tmp / "run"), "--quiet"], tmp)
    assert code == 0, err
    return tmp / "run"


@pytest.mark.slow
def test_sigkill_at_chosen_points_then_resume_matches_an_uninterrupted_run(tmp_path, keys, reference):
    out = tmp_path / "run"
    kill = -signal.SIGKILL
    # right after the first checkpoint (the end of epoch 1)
    assert run(["train", *keys, "--out", str(out), "--quiet"], tmp_path, "kill-after-checkpoint:1")[0] == kill
    assert position(out) == (0, 1, 0, True, False)
    # mid-epoch: Ctrl-C at step 20 of epoch 2 writes a checkpoint there
    code, err = run(["resume", str(out), "--quiet"], tmp_path, "interrupt-after-step:20")
    assert code == 130, err
    assert position(out) == (0, 1, 20, True, False)
    # mid-epoch again, ten steps on, with no checkpoint since: the resume goes back to step 20
    assert run(["resume", str(out), "--quiet"], tmp_path, "kill-after-step:10")[0] == kill
    assert position(out) == (0, 1, 20, True, False)
    # between the generations: from epoch 2, the (epochs - 1)-th checkpoint is the one written after generation 1
    # ends, before generation 2 starts (and re-initializes the reset hypothesis)
    between = epochs_of(keys) - 1
    assert run(["resume", str(out), "--quiet"], tmp_path, f"kill-after-checkpoint:{between}")[0] == kill
    assert position(out) == (1, 0, 0, False, False)
    code, err = run(["resume", str(out), "--quiet"], tmp_path)
    assert code == 0, err
    assert_same_as(reference, out)


@pytest.mark.slow
def test_sigkill_at_seeded_random_steps_then_resume_matches_an_uninterrupted_run(tmp_path, keys, reference):
    """Kills right after steps drawn with a fixed seed: some land just after an epoch ended, while its checkpoint
    is being written in the background (the file on disk is then the old one or the new one, never a torn one)."""
    out = tmp_path / "run"
    rng = random.Random(0)
    args = ["train", *keys, "--out", str(out), "--quiet"]
    for _ in range(3):
        code, err = run(args, tmp_path, f"kill-after-step:{rng.randint(1, 80)}")
        assert code == -signal.SIGKILL, err
        assert not position(out)[-1]
        args = ["resume", str(out), "--quiet"]
    code, err = run(args, tmp_path)
    assert code == 0, err
    assert_same_as(reference, out)


@pytest.mark.slow
def test_ctrl_c_checkpoints_exits_130_and_resume_matches(tmp_path, keys, reference):
    """A real SIGINT from outside, at an exact step: the run stops itself there (SIGSTOP), gets the SIGINT, and
    is continued (SIGCONT); it handles the signal before its next step."""
    out = tmp_path / "run"
    proc = start(["train", *keys, "--out", str(out)], tmp_path, "pause-after-step:7")
    assert stopped(proc), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    out_text, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("resprout: error: interrupted at generation 1 epoch 1 step 7;") and \
        f"resprout resume {out}" in last
    assert "Traceback" not in err
    assert position(out) == (0, 0, 7, True, False)
    code, err = run(["resume", str(out), "--quiet"], tmp_path)
    assert code == 0, err
    assert_same_as(reference, out)
    assert torch.load(out / "best-model.pt", weights_only=True)["format"] == "resprout.weights"


@pytest.mark.parametrize("spec", ["kill", "kill-after-checkpoint", "kill-after-checkpoint:0", "explode-after-step:3",
                                  "kill-after-epoch:1", "kill-after-step:x"])
def test_a_malformed_fault_is_refused_in_one_line_before_anything_is_written(tmp_path, spec, monkeypatch, capsys):
    from resprout.cli import main
    from tests.test_run_safety import cli_keys

    monkeypatch.setenv("RESPROUT_FAULT", spec)
    out = tmp_path / "run"
    assert main(["train", *cli_keys(epochs=1), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"RESPROUT_FAULT={spec!r} is not a fault" in err and "kill-after-checkpoint:2" in err
    assert not out.exists()
