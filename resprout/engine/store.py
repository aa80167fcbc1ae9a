"""The results store: one SQLite file (standard library) holding every run, its configuration and its metrics.

Reports and plots read from here, never from logs. Tables:

* ``runs``: one row per run: id, directory, status, the full resolved configuration (JSON), its fingerprints
  (``config_hash`` of everything that decides the result; ``group_key`` of the same without the seed, so runs
  that differ only by seed are grouped), and the environment (versions, threads, device).
* ``epoch_metrics``: (run, member, generation, epoch, split, metric) -> value, for split in train/val/test.
* ``generation_metrics``: (run, member, generation, metric) -> value.

Metric rows are written with ``INSERT OR REPLACE``: an epoch that is re-run after a resume overwrites its own rows
with the same values instead of duplicating them. The file is opened in WAL mode so several runs (or a report)
may use it at once.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from resprout.errors import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    run_dir TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL,
    data TEXT, model TEXT, method TEXT, seed INTEGER,
    config TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    group_key TEXT NOT NULL,
    env TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS epoch_metrics (
    run_id TEXT NOT NULL, member TEXT NOT NULL, generation INTEGER NOT NULL, epoch INTEGER NOT NULL,
    split TEXT NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_id, member, generation, epoch, split, metric)
);
CREATE TABLE IF NOT EXISTS generation_metrics (
    run_id TEXT NOT NULL, member TEXT NOT NULL, generation INTEGER NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_id, member, generation, metric)
);
"""


# The tables and columns of a resprout store; a file with other tables is refused, never changed.
TABLES = {
    "runs": ("id", "run_dir", "created", "updated", "status", "data", "model", "method", "seed", "config",
             "config_hash", "group_key", "env"),
    "epoch_metrics": ("run_id", "member", "generation", "epoch", "split", "metric", "value"),
    "generation_metrics": ("run_id", "member", "generation", "metric", "value"),
}
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _nearly_full(folder: Path) -> bool:
    """Whether ``folder``'s filesystem has (almost) no space left: SQLite reports a full disk while creating its
    WAL index as a plain "disk I/O error"."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (64 << 10)


def _store_problem(path: Path, e: BaseException) -> StoreError:
    """One line naming the store for an sqlite3 or OS error met while using it."""
    text = " ".join(str(e).split()) or type(e).__name__
    low = text.lower()
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC or "disk is full" in low or "no space" in low
            or ("disk i/o error" in low and _nearly_full(path.parent))):
        return StoreError(f"no space left on {path} (the results store); free some space and run again")
    if "readonly" in low or "read-only" in low or (isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM,
                                                                                           errno.EROFS)):
        return StoreError(f"results store {path} is read-only ({text}); set --store or RESPROUT_STORE to a "
                          f"writable file")
    if "not a database" in low or "malformed" in low:
        return StoreError(f"results store {path} is corrupt or not an SQLite database ({text}); it was not changed")
    if "unable to open" in low:
        return StoreError(f"results store {path} cannot be opened ({text}); check that its folder exists and is "
                          f"writable")
    if "locked" in low or "busy" in low:
        return StoreError(f"results store {path} is locked by another process ({text}); try again")
    return StoreError(f"results store {path} cannot be used: {text}")


def _guarded(method):
    """sqlite3 and OS errors inside a Store method become one-line StoreErrors naming the store."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as e:
            raise _store_problem(self.path, e) from None

    return wrapper


def default_store_path() -> Path:
    """``$RESPROUT_STORE``, else ``runs/resprout.db`` under the current directory."""
    env = os.environ.get("RESPROUT_STORE")
    return Path(env) if env else Path.cwd() / "runs" / "resprout.db"


@dataclass
class RunRecord:
    id: str
    run_dir: str
    created: float
    updated: float
    status: str
    data: str
    model: str
    method: str
    seed: int
    config: dict
    config_hash: str
    group_key: str
    env: dict


class Store:
    """The results store at ``path``. ``create=False`` (the commands that only read: ``runs``, ``report``) never
    creates one: a missing file, or an SQLite file without tables (an empty file), is opened as a store holding no
    runs, and nothing is written to it."""

    def __init__(self, path: str | Path | None = None, *, create: bool = True) -> None:
        self.path = Path(path) if path else default_store_path()
        self._db: sqlite3.Connection | None = None
        self.create = create
        existed = self.path.exists()
        try:
            self._open()
        except BaseException:
            if self._db is not None:
                self._db.close()
            if not existed:  # do not leave an empty store behind (a full disk, say)
                try:
                    if self.path.is_file() and self.path.stat().st_size == 0:
                        self.path.unlink()
                except OSError:
                    pass
            raise

    @_guarded
    def _open(self) -> None:
        path = self.path
        for parent in [path.parent, *path.parent.parents]:
            if parent.exists():
                if not parent.is_dir():
                    raise StoreError(f"results store {path} cannot be created: {parent} is a file, not a folder")
                break
        if path.exists():
            if path.is_dir():
                raise StoreError(f"results store {path} is a folder, not a file")
        elif not self.create:
            return  # no store yet: nothing to read, and only `train` creates one
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30.0)
        try:
            if not self.create and not self._check_schema():  # a plain read: an empty file stays empty
                self._db.close()
                self._db = None
                return
            # One transaction holds the write lock from the schema check to the last CREATE: processes that open
            # a new store at once (`compare jobs=2`) would otherwise see each other's half-made schema.
            writable = self._begin_immediate()
            complete = self._check_schema()  # before anything writes: a foreign file stays byte-identical
            if not complete and writable:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
            if writable:
                self._db.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            # The file's header is read only now that SQLite refused it: opening and closing a store file with a
            # plain file handle drops every POSIX lock this process holds on it, so another process closing its
            # connection would take itself for the last one and delete the WAL under this process's live
            # connection to the same store (rows lost; seen with `resprout compare jobs=2`).
            if "not a database" in str(e).lower():
                with open(path, "rb") as fh:
                    head = fh.read(len(_SQLITE_MAGIC))
                if head and head != _SQLITE_MAGIC:
                    raise StoreError(f"{path} is not a resprout results store (not an SQLite file); it was not "
                                     f"changed") from None
            raise
        if not writable:
            if not complete:
                raise StoreError(f"results store {path} is read-only and holds no resprout tables; set --store or "
                                 f"RESPROUT_STORE to a writable file")
            return  # a read-only store with every table: it can be read (runs, report); writing raises
        self._journal_wal()
        self._db.execute("PRAGMA synchronous=NORMAL")

    def _begin_immediate(self) -> bool:
        """Take the write lock (waiting for other writers); False for a store that cannot be written."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.OperationalError as e:
            if "readonly" in str(e).lower() or "read-only" in str(e).lower():
                return False
            raise

    def _journal_wal(self) -> None:
        """WAL mode (several readers beside one writer). Switching needs every other connection gone for a moment,
        and SQLite answers "locked" at once instead of waiting: retry for the connection's timeout."""
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _check_schema(self) -> bool:
        """Refuse a file of another schema; whether the file already holds every resprout table."""
        rows = self._db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        tables = {r[0] for r in rows if not r[0].startswith("sqlite_")}
        if not tables:
            return False  # a new (empty) store
        foreign = sorted(tables - set(TABLES))
        missing = sorted(set(TABLES) - tables)
        if foreign or missing:
            what = f"tables {sorted(tables)}" + (f", lacks {missing}" if missing else "")
            raise StoreError(f"{self.path} is not a resprout results store (it holds {what}); it was not changed")
        for table, columns in TABLES.items():
            have = tuple(r[1] for r in self._db.execute(f"PRAGMA table_info({table})").fetchall())
            if have != columns:
                raise StoreError(f"{self.path} is not a resprout results store of this version (table {table} has "
                                 f"columns {list(have)}, expected {list(columns)}); it was not changed")
        return True

    def close(self) -> None:
        """Close the connection; the last one to close a store checkpoints its WAL into the file and removes the
        ``-wal``/``-shm`` sidecars."""
        if self._db is not None:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------------------------------
    @_guarded
    def register_run(self, run_id: str, run_dir: str, config: dict, config_hash: str, group_key: str,
                     env: dict) -> None:
        now = time.time()
        with self._db:
            self._db.execute(
                "INSERT INTO runs (id, run_dir, created, updated, status, data, model, method, seed, config, "
                "config_hash, group_key, env) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET run_dir=excluded.run_dir, updated=excluded.updated, "
                "env=excluded.env",
                (run_id, run_dir, now, now, "running", config.get("data"), config.get("model"), config.get("method"),
                 config.get("seed"), json.dumps(config, sort_keys=True), config_hash, group_key,
                 json.dumps(env, sort_keys=True)))

    @_guarded
    def set_status(self, run_id: str, status: str) -> None:
        with self._db:
            self._db.execute("UPDATE runs SET status=?, updated=? WHERE id=?", (status, time.time(), run_id))

    @_guarded
    def log_epoch(self, run_id: str, member: str, generation: int, epoch: int, split: str,
                  metrics: dict[str, float]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO epoch_metrics VALUES (?,?,?,?,?,?,?)",
                [(run_id, member, generation, epoch, split, k, float(v)) for k, v in metrics.items()])
            self._db.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), run_id))

    @_guarded
    def log_generation(self, run_id: str, member: str, generation: int, metrics: dict[str, float]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO generation_metrics VALUES (?,?,?,?,?)",
                [(run_id, member, generation, k, float(v)) for k, v in metrics.items()])

    @_guarded
    def forget_after(self, run_id: str, generation: int, epoch: int) -> None:
        """Drop metrics written after the position a run resumes from (they will be written again)."""
        with self._db:
            self._db.execute("DELETE FROM epoch_metrics WHERE run_id=? AND (generation>? OR (generation=? AND "
                             "epoch>=?))", (run_id, generation, generation, epoch))
            self._db.execute("DELETE FROM generation_metrics WHERE run_id=? AND generation>=?", (run_id, generation))

    # -- reading --------------------------------------------------------------------------------------------------
    def _record(self, row: tuple) -> RunRecord:
        r = list(row)
        for i, column in ((9, "config"), (12, "env")):
            try:
                r[i] = json.loads(r[i])
            except (TypeError, ValueError):
                raise StoreError(f"results store {self.path} has a corrupt row: run {r[0]!r} has a {column} that is "
                                 f"not JSON; it was not changed") from None
            if not isinstance(r[i], dict):
                raise StoreError(f"results store {self.path} has a corrupt row: run {r[0]!r} has a {column} that is "
                                 f"not a JSON object; it was not changed")
        return RunRecord(*r)

    @property
    def empty(self) -> bool:
        """A ``create=False`` store that found no store file (or no tables in it): it holds no runs."""
        return self._db is None

    @_guarded
    def runs(self) -> list[RunRecord]:
        if self.empty:
            return []
        cur = self._db.execute("SELECT * FROM runs ORDER BY created")
        return [self._record(r) for r in cur.fetchall()]

    @_guarded
    def run(self, run_id: str) -> RunRecord | None:
        if self.empty:
            return None
        row = self._db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._record(row) if row else None

    @_guarded
    def epoch_metrics(self, run_id: str) -> list[tuple[str, int, int, str, str, float]]:
        """(member, generation, epoch, split, metric, value) rows, in training order."""
        cur = self._db.execute("SELECT member, generation, epoch, split, metric, value FROM epoch_metrics "
                               "WHERE run_id=? ORDER BY generation, epoch, member, split, metric", (run_id,))
        return cur.fetchall()

    @_guarded
    def generation_metrics(self, run_id: str) -> list[tuple[str, int, str, float]]:
        cur = self._db.execute("SELECT member, generation, metric, value FROM generation_metrics WHERE run_id=? "
                               "ORDER BY generation, member, metric", (run_id,))
        return cur.fetchall()
