import os
import sys
from pathlib import Path

import pytest
import torch

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


def _vision_missing() -> str | None:
    """Why the vision environment is not here (torchvision, timm or pycocotools fails to import), or None."""
    import importlib

    for module in ("torchvision", "timm", "pycocotools.cocoeval"):
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001  (a torchvision built for another torch raises RuntimeError)
            return f"{module} does not import ({type(e).__name__}): run it in the vision environment (make test-vision)"
    return None


def pytest_collection_modifyitems(config, items):
    """Tests marked ``vision`` skip, in one line, where the vision environment is missing, except under
    RESPROUT_REQUIRE_VISION=1 (``make test-vision``), where they must run. ``make test`` deselects them."""
    marked = [item for item in items if item.get_closest_marker("vision")]
    if not marked or os.environ.get("RESPROUT_REQUIRE_VISION") == "1":
        return
    reason = _vision_missing()
    if reason:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))
