"""Teachers: run directories (best weights, else the last) and modules become frozen eval-mode members; every
bad teacher is refused in one line before anything is written (exit code 2 on the command line)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

import resprout
from resprout.config import make_config
from resprout.engine.checkpoint import WEIGHTS_FORMAT, load_file
from resprout.errors import ConfigError
from resprout.models import build_model
from resprout.run import create_trainer
from tests.conftest import PYTHON, cli_env, synthetic


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("teacher")
    resprout.train(**synthetic(epochs=1, width=1.0), out=base / "t", store=base / "runs.db")
    return base / "t"


def refused(tmp_path, match: str, **keys) -> None:
    """``resprout.train`` refuses with ``match`` and leaves no run directory behind."""
    out = tmp_path / "student"
    with pytest.raises(ConfigError, match=match) as info:
        resprout.train(**synthetic(**keys), out=out)
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_a_run_directory_teacher_loads_its_last_weights_else_its_best(teacher_dir, tmp_path):
    # the last weights, not the best epoch: without a validation split the best epoch is picked on the test split
    perturbed = tmp_path / "perturbed"
    shutil.copytree(teacher_dir, perturbed)
    state = torch.load(perturbed / "checkpoint.pt", weights_only=True)
    state["members"]["model"]["model"]["fc.bias"] += 1.0  # tell the last weights from the best file's
    torch.save(state, perturbed / "checkpoint.pt")
    trainer = create_trainer(make_config(**synthetic(method="kd", teacher=[str(perturbed)])), run_dir=None,
                             run_id=None, store_path=None)
    teacher = trainer.members["teacher"]
    assert not teacher.trainable and not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())
    for k, v in state["members"]["model"]["model"].items():
        assert torch.equal(teacher.model.state_dict()[k], v), k
    best_only = tmp_path / "best-only"
    shutil.copytree(teacher_dir, best_only)
    (best_only / "checkpoint.pt").unlink()
    best = load_file(best_only / "best-model.pt", WEIGHTS_FORMAT)["model"]
    trainer = create_trainer(make_config(**synthetic(method="kd", teacher=[str(best_only)])), run_dir=None,
                             run_id=None, store_path=None)
    for k, v in best.items():
        assert torch.equal(trainer.members["teacher"].model.state_dict()[k], v), k


def test_bad_teachers_are_refused_in_one_line_before_anything_is_written(teacher_dir, tmp_path):
    refused(tmp_path, "needs a teacher", method="kd")
    refused(tmp_path, "uses no teacher", method="ce", teacher=[str(teacher_dir)])
    refused(tmp_path, "does not exist", method="kd", teacher=[str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    refused(tmp_path, "not a resprout run directory", method="kd", teacher=[str(tmp_path / "empty")])
    (tmp_path / "bare").mkdir()
    shutil.copy(teacher_dir / "run.json", tmp_path / "bare" / "run.json")
    refused(tmp_path, "holds no weights", method="kd", teacher=[str(tmp_path / "bare")])
    refused(tmp_path, r"other data \(data_options=", method="ktan", teacher=[str(teacher_dir)],
            data_options={"num_classes": 3, "n_train": 256, "n_test": 48, "image_size": 8})
    refused(tmp_path, r"another normalization \(per_class=", method="kd", teacher=[str(teacher_dir)],
            per_class=20)
    torch.manual_seed(0)
    three = build_model("cnn", in_channels=1, num_classes=3, width=0.5)
    out = tmp_path / "student"
    with pytest.raises(ConfigError, match="has 3 classes, this run's data 4"):
        resprout.train(**synthetic(method="kd"), teacher=three, out=out)
    assert not out.exists()
    with pytest.raises(ConfigError, match="cannot read this run's images"):
        resprout.train(**synthetic(method="kd"), teacher=build_model("cnn", in_channels=3, num_classes=4),
                       out=out)
    assert not out.exists()


def test_module_teachers_are_recorded_and_must_be_passed_again_to_resume(tmp_path):
    torch.manual_seed(0)
    t = build_model("cnn", in_channels=1, num_classes=4, width=0.5)
    out = tmp_path / "run"
    resprout.train(**synthetic(method="kd", epochs=1), teacher=[t], out=out)
    info = resprout.run.read_run_file(out)
    assert info["config"]["teacher"] == ["module:SmallCNN"]
    with pytest.raises(ConfigError, match="names 1 teacher module"):
        resprout.resume(out)


@pytest.mark.slow
def test_cli_refusals_exit_2_with_one_line_and_write_nothing(teacher_dir, tmp_path):
    # refused before the run directory is claimed, and refused in a method's setup (after it was claimed)
    cases = [(["method=kd"], "method=kd needs a teacher"),
             (["method=fitnet", f"teacher={teacher_dir}", "fitnet.student_layer=relu9"], "no module 'relu9'")]
    for args, message in cases:
        out = tmp_path / "out"
        base = ["data=synthetic", "data.num_classes=4", "data.n_train=256", "data.n_test=48", "data.image_size=8",
                "model=cnn", "width=0.5", "epochs=1", "threads=1", "progress=none"]
        proc = subprocess.run([PYTHON, "-m", "resprout", "train", *base, *args, "--out", str(out)],
                              env=cli_env(tmp_path), capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], proc.stderr
        assert not out.exists()
