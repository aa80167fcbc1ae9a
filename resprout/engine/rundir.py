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


# -- a saved run: the one reader of a run directory ------------------------------------------------------------------------
CHECKPOINT_NAME = "checkpoint.pt"  # everything a resume needs (written by resprout.engine.state)
#: the files a run writes in its directory besides ``best-<member>.pt`` (never overwritten by anything else)
OWN_FILES = (CHECKPOINT_NAME, RUN_FILE, "train.log", LOCK_FILE)


def best_name(member: str) -> str:
    """The file of ``member``'s best weights in a run directory."""
    return f"best-{member}.pt"


def is_own_file(name: str) -> bool:
    """Whether a file called ``name`` in a run directory is one the run writes (its checkpoint, run.json, log,
    lock or best weights)."""
    return name in OWN_FILES or (name.startswith("best-") and name.endswith(".pt"))


class SavedRun:
    """A run directory opened for reading: its ``run.json`` (:attr:`info`), configuration (:attr:`config`), lock
    (:meth:`lock`), checkpoint (:attr:`checkpoint_path`, :meth:`checkpoint`) and networks (:meth:`weights`,
    :meth:`model`, surgery replayed). Everything that reads a saved run (resume, open_run, teachers, analyze, slim,
    report, compare) opens it here.

    ``what`` names the run in messages of a command or method that was given the directory (``"teacher"``,
    ``"analyze:"``): then a missing or broken directory is a :class:`~resprout.errors.ConfigError` (exit code 2),
    else a :class:`~resprout.errors.CheckpointError`. Torch is imported only by the methods that load weights."""

    def __init__(self, path: Path, info: dict, what: str | None = None) -> None:
        self.path, self.info, self.what = path, info, what
        self._config = None
        self._checkpoint: dict | None = None

    @classmethod
    def open(cls, run_dir: str | Path, *, what: str | None = None) -> SavedRun:
        run_dir = Path(run_dir)
        if what is None:
            if not run_dir.is_dir():
                raise CheckpointError(f"{run_dir} does not exist")
            return cls(run_dir, read_run_file(run_dir))
        return cls(run_dir, read_run_dir(run_dir, what), what)

    @staticmethod
    def exists(run_dir: str | Path) -> bool:
        """Whether ``run_dir`` holds a run (a ``run.json``), without reading it."""
        return (Path(run_dir) / RUN_FILE).exists()

    # -- run.json ---------------------------------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.info["run_id"]

    @property
    def store(self) -> Path:
        return Path(self.info["store"])

    @property
    def config_dict(self) -> dict:
        """The configuration as ``run.json`` stores it (resolved when the run started)."""
        return self.info["config"]

    @property
    def config(self):
        """The stored configuration as a :class:`~resprout.config.Config` (validated once, then kept)."""
        if self._config is None:
            from resprout.config import config_from_dict

            self._config = config_from_dict(self.config_dict)
        return self._config

    def lock(self) -> RunLock:
        """Take the directory's lock (refused while another live process holds it); release it when done."""
        return RunLock(self.path).acquire()

    # -- weights ----------------------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_NAME

    def require_checkpoint(self) -> Path:
        """The checkpoint's path, or a one-line refusal when the run has written none yet."""
        if not self.checkpoint_path.is_file():
            raise self._refuse(f"{self.path} has no checkpoint yet (no {CHECKPOINT_NAME})")
        return self.checkpoint_path

    def best_path(self, member: str = "model") -> Path:
        return self.path / best_name(member)

    def _refuse(self, message: str) -> Exception:
        from resprout.errors import ConfigError

        return ConfigError(f"{self.what} {message}") if self.what else CheckpointError(message)

    def checkpoint(self) -> dict:
        """The checkpoint's payload (read once), or a one-line refusal when there is none or it is broken."""
        if self._checkpoint is None:
            from resprout.engine import checkpoint as ckpt

            try:
                self._checkpoint = ckpt.load_file(self.require_checkpoint())
            except CheckpointError as e:
                if self.what is None:
                    raise
                raise self._refuse(f"{self.path}: {e}") from None
        return self._checkpoint

    def weights(self, member: str = "model", which: str = "last") -> tuple[dict, list[dict]]:
        """(state dict, surgery records) of ``member``'s ``last`` weights (the checkpoint) or its ``best``
        (``best-<member>.pt``); ``which="last-or-best"``: the last, else the best when the run has no checkpoint."""
        from resprout.engine import checkpoint as ckpt

        if which not in ("last", "best", "last-or-best"):
            raise ValueError(f"which must be last, best or last-or-best, not {which!r}")
        if which != "best" and (which == "last" or self.checkpoint_path.is_file()):
            state = self.checkpoint()
            if member not in state["members"]:
                raise self._refuse(f"{self.path}: its checkpoint has no member {member!r} (members: "
                                   f"{', '.join(state['members'])})")
            return state["members"][member]["model"], [r for r in state["surgery"] if r["member"] == member]
        best = self.best_path(member)
        if not best.is_file():
            if which == "best":
                raise self._refuse(f"{self.path} holds no best weights of {member!r} (no {best.name})")
            raise self._refuse(f"{self.path} holds no weights (no {CHECKPOINT_NAME} and no {best.name})")
        try:
            rec = ckpt.load_file(best, ckpt.WEIGHTS_FORMAT)
        except CheckpointError as e:
            if self.what is None:
                raise
            raise self._refuse(f"{self.path}: {e}") from None
        return rec["model"], list(rec.get("surgery", []))

    def model(self, *, in_channels: int, num_classes: int, member: str = "model", which: str = "last"):
        """``member``'s network rebuilt from the stored configuration, its surgery replayed (a slimmed or widened
        network has its own shapes), with its ``which`` weights loaded (:meth:`weights`). A custom model is refused
        (its class is not stored; pass the network itself). A ``RuntimeError`` of ``load_state_dict`` propagates:
        the caller words it."""
        from resprout.models import build_model
        from resprout.surgery.registry import get_surgery

        cfg = self.config
        if cfg.model.startswith("custom:"):
            raise self._refuse(f"{self.path} trained a custom model ({cfg.model[7:]}); pass the network itself")
        state, surgery = self.weights(member, which)
        model = build_model(cfg.model, in_channels=in_channels, num_classes=num_classes, **cfg.model_kwargs())
        for rec in surgery:
            out = get_surgery(rec["op"])(model, **rec["args"])
            model = getattr(out, "model", out)
        model.load_state_dict(state)
        return model
