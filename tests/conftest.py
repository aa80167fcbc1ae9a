import os
import select
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from tests.vision_env import pytest_collection_modifyitems, pytest_configure  # noqa: F401  (the `vision` marker)

ROOT = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
os.environ.pop("RESPROUT_FAULT", None)  # a fault is chosen per command by the test that starts it (cli_env)

# Tests measure mechanics and learning, not speed: one thread each, in this process and in the commands they start
# (on a busy 2-core machine two threads per process can be many times slower than one).
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"
# The suite's results must not depend on the kind of machine: precision=auto and channels_last=auto resolve to fp32
# and NCHW here (the reference loops the tests compare with are fp32 NCHW), in this process and in the commands the
# tests start; a test that wants bf16 or channels-last asks for it, and bf16 runs on any CPU (emulated where it is
# not native: slow, so bf16 tests are tiny). resprout.engine.precision documents both variables.
os.environ["RESPROUT_PORTABLE"] = "1"
os.environ["RESPROUT_ALLOW_EMULATED_BF16"] = "1"


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread in every test, whatever an earlier test's run set (``threads=`` changes it process-wide)."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def processes_are_slow(request, monkeypatch):
    """The tiers' rule: a test that starts a Python process (a command, a worker, torchrun) is marked ``slow``, so
    that ``make test-fast`` (``-m "not slow"``) stays in this process. An unmarked test that starts one fails here,
    naming the mark it needs."""
    if request.node.get_closest_marker("slow"):
        return
    start = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kw):
        first = args if isinstance(args, (str, bytes, os.PathLike)) else next(iter(args), "")
        name = os.path.basename(os.fsdecode(first).split()[0]) if first else ""
        if os.fsdecode(first) == sys.executable or name.startswith(("python", "torchrun")):
            pytest.fail(f"{request.node.nodeid} starts a Python process ({name}): mark it @pytest.mark.slow "
                        f"(tests in tiers, README 'Development')", pytrace=False)
        start(self, args, *rest, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


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


def cli_env(tmp_path, fault: str | None = None):
    """The environment of a command a test starts; ``fault``: a deterministic fault for it, e.g.
    ``kill-after-checkpoint:2`` (``RESPROUT_FAULT``, see :class:`resprout.engine.state.Fault`)."""
    env = dict(os.environ)
    env.pop("RESPROUT_FAULT", None)
    if fault:
        env["RESPROUT_FAULT"] = fault
    env["RESPROUT_STORE"] = str(tmp_path / "runs" / "resprout.db")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CI", None)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a process that aborts in C++ (SIGABRT, SIGSEGV) prints its Python stacks
    return env


PYTHON = sys.executable

# Waits on a subprocess are for events (a line on its stderr, its stop, its end), never for a time. This bound only
# keeps a hung process from blocking the suite forever; it is no measure of speed.
HANG_GUARD = 900.0


def read_until(proc: subprocess.Popen, needle: str) -> str:
    """Read ``proc``'s stderr (a pipe) until ``needle`` appears; returns what was read. The process ending
    first fails the test."""
    fd, seen = proc.stderr.fileno(), b""
    while needle.encode() not in seen:
        ready, _, _ = select.select([fd], [], [], HANG_GUARD)
        if not ready:
            proc.kill()
            pytest.fail(f"hung: no output for {HANG_GUARD:.0f} s while waiting for {needle!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            proc.wait()
            pytest.fail(f"ended (exit {proc.returncode}) before {needle!r} appeared: "
                        f"{seen.decode(errors='replace')[-2000:]}")
        seen += chunk
    return seen.decode(errors="replace")


def stopped(proc: subprocess.Popen) -> bool:
    """Block until ``proc`` stops (SIGSTOP, e.g. the fault ``pause-after-step:N``: True) or ends (False). The
    process is left for ``Popen`` to reap."""
    result = {}

    def wait() -> None:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WSTOPPED | os.WNOWAIT)
        result["stopped"] = info.si_code == os.CLD_STOPPED

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(HANG_GUARD)
    if waiter.is_alive():
        proc.kill()
        pytest.fail(f"hung: the process neither stopped nor ended in {HANG_GUARD:.0f} s")
    return result["stopped"]
needs_fashion = pytest.mark.skipif(not FASHION_DIR.is_dir(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(autouse=True)
def scoped_registries():
    """What a test registers (a method, model, data source, surgery operation, logger) is forgotten after it, so
    no test sees another's entries; runs take test methods as objects anyway (``train(methods=[Probe])``)."""
    from contextlib import ExitStack

    from resprout.data.sources.registry import SOURCES
    from resprout.engine.loggers import LOGGERS
    from resprout.methods.registry import METHODS
    from resprout.models.registry import MODELS
    from resprout.surgery.registry import SURGERY

    with ExitStack() as stack:
        for registry in (METHODS, MODELS, SOURCES, SURGERY, LOGGERS):
            stack.enter_context(registry.scoped())
        yield
