import os
import sys
from pathlib import Path

import pytest
import torch

from tests.vision_env import pytest_collection_modifyitems, pytest_configure  # noqa: F401  (the `vision` marker)

ROOT = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# Tests measure mechanics and learning, not speed: one thread each, in this process and in the commands they start
# (on a busy 2-core machine two threads per process can be many times slower than one).
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread in every test, whatever an earlier test's run set (``threads=`` changes it process-wide)."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    """Every test writes its results store and run directories under its own tmp_path."""
    monkeypatch.setenv("RESPROUT_STORE", str(tmp_path / "runs" / "resprout.db"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "runs" / "resprout.db"


def synthetic(**kw):
    """Keys of a tiny synthetic run: 8x8 images, 4 classes, 8 steps per epoch, well above chance in 2 epochs."""
    keys = dict(data="synthetic", data_options={"num_classes": 4, "n_train": 256, "n_test": 48, "image_size": 8},
                model="cnn", width=0.5, epochs=2, batch_size=32, eval_batch_size=64, lr=0.05, progress="none",
                threads=1)
    keys.update(kw)
    return keys


def cli_env(tmp_path):
    env = dict(os.environ)
    env["RESPROUT_STORE"] = str(tmp_path / "runs" / "resprout.db")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CI", None)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a process that aborts in C++ (SIGABRT, SIGSEGV) prints its Python stacks
    return env


PYTHON = sys.executable
needs_fashion = pytest.mark.skipif(not FASHION_DIR.is_dir(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
