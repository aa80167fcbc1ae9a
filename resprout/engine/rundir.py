"""Run directories: ``run.json`` names the run, its resolved configuration and the results store it reports to."""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path

from resprout.errors import CheckpointError

RUN_FILE = "run.json"


def read_run_dir(run_dir: str | Path, what: str) -> dict:
    """``run.json`` of a run directory that a command or method reads (a teacher, ``analyze``), or one line
    (:class:`~resprout.errors.ConfigError`, exit code 2) saying what ``what`` was given instead."""
    from resprout.errors import ConfigError

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{what} {run_dir} does not exist (expected a resprout run directory)")
    try:
        return read_run_file(run_dir)
    except CheckpointError as e:
        raise ConfigError(f"{what}: {e}") from None


def read_run_file(run_dir: Path) -> dict:
    f = Path(run_dir) / RUN_FILE
    if not f.is_file():
        raise CheckpointError(f"{run_dir} is not a resprout run directory (no {RUN_FILE})")
    try:
        info = json.loads(f.read_text())
        _ = info["run_id"], info["config"], info["store"]
        if not isinstance(info["config"], dict):
            raise TypeError("its config is not a table")
    except UnicodeDecodeError:
        raise CheckpointError(f"{f} is corrupted (binary, not JSON); nothing was changed") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        reason = f"missing key {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
        raise CheckpointError(f"{f} is corrupted ({type(e).__name__}: {reason}); nothing was changed") from None
    return info


def write_run_file(run_dir: Path, info: dict) -> None:
    (Path(run_dir) / RUN_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))


# -- the lock: one process trains in a run directory at a time -----------------------------------------------------------
LOCK_FILE = ".lock"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(run_dir: Path) -> dict | None:
    """``{"pid", "host", "time"}`` of the lock in ``run_dir``, or None without one (an unreadable lock reads as
    ``{"pid": 0}``, i.e. stale)."""
    f = Path(run_dir) / LOCK_FILE
    try:
        text = f.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {"pid": 0, "host": None, "time": None}
    try:
        info = json.loads(text)
        return {"pid": int(info["pid"]), "host": info.get("host"), "time": info.get("time")}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return {"pid": 0, "host": None, "time": None}


def holder_alive(holder: dict | None) -> bool | None:
    """True/False for a lock of this machine; None when it was taken on another host (cannot tell)."""
    if holder is None:
        return False
    if holder.get("host") and holder["host"] != socket.gethostname():
        return None
    return pid_alive(holder["pid"])


class RunLock:
    """``DIR/.lock`` holding this process's pid and host, created atomically (a hard link fails if it exists); a
    stale lock (its process is gone) is taken over. Release it with :meth:`release` (idempotent; only removes a lock that is still ours)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False

    def acquire(self) -> RunLock:
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})
        # the lock appears whole (written to a private file, then hard-linked into place), so another process never
        # reads a half-written lock and takes it for a stale one
        tmp = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        tmp.write_text(body)
        try:
            return self._acquire(tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def _acquire(self, tmp: Path) -> RunLock:
        for _ in range(5):
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                holder = lock_holder(self.path.parent)
                if holder is None:
                    continue  # released in between: try again
                alive = holder_alive(holder)
                if alive is False:  # stale: its process is gone
                    try:
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                where = "" if alive else f" on {holder['host']}"
                raise CheckpointError(f"{self.path.parent} is in use by process {holder['pid']}{where} "
                                      f"(lock {self.path}); nothing was changed: wait for it to end or stop it")
            self.held = True
            return self
        raise CheckpointError(f"cannot take the lock {self.path}; nothing was changed")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = lock_holder(self.path.parent)
        if holder is not None and holder["pid"] == os.getpid():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
