"""Checkpoint files: atomic, written in the background, loaded safely.

A checkpoint is written to a temporary file in the same directory, flushed to disk (fsync), renamed over the old
one and the directory entry is flushed too: at every moment the file on disk is either the previous complete
checkpoint or the new complete one, whatever kills the process.

Writing happens on a background thread from a snapshot (copies of every tensor, taken at a step boundary), so
training goes on while the bytes reach the disk. Loading always uses ``torch.load(weights_only=True)``: a
checkpoint holds tensors, numbers, strings, lists and dicts, and nothing that could run code.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
import zipfile
from pathlib import Path
from typing import Any

import torch

from resprout.errors import CheckpointError, NoSpaceError, ResproutError

FORMAT = "resprout.checkpoint"
WEIGHTS_FORMAT = "resprout.weights"
VERSION = 1

# The keys a file of each format must hold to be loaded (what loading reads; "ranks" is optional).
REQUIRED_KEYS = {
    FORMAT: ("fingerprint", "config", "position", "members", "surgery", "methods", "rng", "accum", "epoch_time",
             "results"),
    WEIGHTS_FORMAT: ("member", "model"),
}
POSITION_KEYS = ("generation", "epoch", "step", "started", "finished")


class _RecordingFile:
    """A file wrapper that remembers the OSError of a failed write (torch's writer turns it into a vague
    RuntimeError)."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._fh.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._fh.flush()


def _is_no_space(e: BaseException | None) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return e is not None and "no space left" in str(e).lower()


def snapshot(obj: Any) -> Any:
    """A deep copy in which every tensor is copied to the CPU, so later in-place updates cannot tear it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [snapshot(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(snapshot(v) for v in obj)
    return obj


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a partial file at ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    recorder: _RecordingFile | None = None
    try:
        with open(tmp, "wb") as fh:
            recorder = _RecordingFile(fh)
            torch.save(obj, recorder)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if _is_no_space(e) or _is_no_space(recorder.error if recorder else None):
            kept = "; the previous checkpoint is kept" if path.exists() else ""
            raise NoSpaceError(f"no space left on {path.parent} while writing {path.name}{kept}") from None
        raise
    finally:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:
            pass
    _fsync_dir(path.parent)


def weights_mismatch(model: torch.nn.Module, state: dict) -> str | None:
    """Why ``state`` (a state dict) does not load into ``model``, naming the first mismatching tensor and both
    shapes; None when every tensor fits. torch's own message starts with a header line and lists every tensor."""
    def shape(t: Any) -> str:
        return str(list(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__

    own = model.state_dict()
    for name, t in own.items():
        if name not in state:
            return f"tensor {name} {shape(t)} is missing from the checkpoint"
        if isinstance(t, torch.Tensor) and isinstance(state[name], torch.Tensor) and state[name].shape != t.shape:
            return f"tensor {name} is {shape(state[name])} in the checkpoint, {shape(t)} in the model"
    extra = next((k for k in state if k not in own), None)
    return None if extra is None else f"tensor {extra} {shape(state[extra])} in the checkpoint is not in the model"


def remove_stale_temporaries(directory: str | Path) -> None:
    """Delete temporary files left by a writer that was killed mid-write."""
    for p in Path(directory).glob(".*.tmp-*"):
        try:
            p.unlink()
        except OSError:
            pass


class AsyncWriter:
    """Writes snapshots on one background thread, in order. ``wait()`` blocks until all are on disk."""

    def __init__(self, max_pending: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="resprout-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                self._queue.task_done()
                return
            obj, path = job
            try:
                atomic_save(obj, path)
            except BaseException as e:  # kept and re-raised in the training thread
                self._error = e
            finally:
                self._queue.task_done()

    def save(self, obj: Any, path: str | Path, *, copy: bool = True) -> None:
        self._raise_pending()
        self._queue.put((snapshot(obj) if copy else obj, Path(path)))

    def wait(self) -> None:
        self._queue.join()
        self._raise_pending()

    def close(self) -> None:
        self.wait()
        self._queue.put(None)
        self._thread.join()

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            if isinstance(err, ResproutError):
                raise err
            raise CheckpointError(f"writing a checkpoint failed: {err}") from err


def load_file(path: str | Path, expected_format: str = FORMAT) -> dict:
    """Load and check a resprout file; one clear line for a missing, corrupted or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is corrupted or not a checkpoint ({reason}); nothing was changed") from None
    except Exception as e:  # the weights-only unpickler refuses foreign objects with various errors
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not a resprout checkpoint ({reason[:160]}); nothing was changed") from None
    if not isinstance(obj, dict) or obj.get("format") != expected_format:
        raise CheckpointError(f"{path} is not a resprout checkpoint (no '{expected_format}' header); "
                              f"nothing was changed")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {obj.get('version')}, this resprout reads "
                              f"version {VERSION}")
    missing = [k for k in REQUIRED_KEYS.get(expected_format, ()) if k not in obj]
    if expected_format == FORMAT and not missing:
        pos, members = obj["position"], obj["members"]
        if not isinstance(pos, dict):
            missing = ["position"]
        else:
            missing = [f"position.{k}" for k in POSITION_KEYS if k not in pos]
        if not isinstance(members, dict):
            missing.append("members")
        else:
            missing += [f"members.{n}.model" for n, m in members.items() if not isinstance(m, dict) or "model" not in m]
    if missing:
        raise CheckpointError(f"{path} is truncated or incomplete: it is missing keys [{', '.join(missing)}]; "
                              f"nothing was changed")
    return obj
