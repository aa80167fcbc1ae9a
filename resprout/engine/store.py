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

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from resprout.errors import ResproutError

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
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_store_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ResproutError(f"results store {self.path} cannot be used: {e}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------------------------------
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

    def set_status(self, run_id: str, status: str) -> None:
        with self._db:
            self._db.execute("UPDATE runs SET status=?, updated=? WHERE id=?", (status, time.time(), run_id))

    def log_epoch(self, run_id: str, member: str, generation: int, epoch: int, split: str,
                  metrics: dict[str, float]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO epoch_metrics VALUES (?,?,?,?,?,?,?)",
                [(run_id, member, generation, epoch, split, k, float(v)) for k, v in metrics.items()])
            self._db.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), run_id))

    def log_generation(self, run_id: str, member: str, generation: int, metrics: dict[str, float]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO generation_metrics VALUES (?,?,?,?,?)",
                [(run_id, member, generation, k, float(v)) for k, v in metrics.items()])

    def forget_after(self, run_id: str, generation: int, epoch: int) -> None:
        """Drop metrics written after the position a run resumes from (they will be written again)."""
        with self._db:
            self._db.execute("DELETE FROM epoch_metrics WHERE run_id=? AND (generation>? OR (generation=? AND "
                             "epoch>=?))", (run_id, generation, generation, epoch))
            self._db.execute("DELETE FROM generation_metrics WHERE run_id=? AND generation>=?", (run_id, generation))

    # -- reading --------------------------------------------------------------------------------------------------
    def _record(self, row: tuple) -> RunRecord:
        r = list(row)
        r[9] = json.loads(r[9])
        r[12] = json.loads(r[12])
        return RunRecord(*r)

    def runs(self) -> list[RunRecord]:
        cur = self._db.execute("SELECT * FROM runs ORDER BY created")
        return [self._record(r) for r in cur.fetchall()]

    def run(self, run_id: str) -> RunRecord | None:
        row = self._db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._record(row) if row else None

    def epoch_metrics(self, run_id: str) -> list[tuple[str, int, int, str, str, float]]:
        """(member, generation, epoch, split, metric, value) rows, in training order."""
        cur = self._db.execute("SELECT member, generation, epoch, split, metric, value FROM epoch_metrics "
                               "WHERE run_id=? ORDER BY generation, epoch, member, split, metric", (run_id,))
        return cur.fetchall()

    def generation_metrics(self, run_id: str) -> list[tuple[str, int, str, float]]:
        cur = self._db.execute("SELECT member, generation, metric, value FROM generation_metrics WHERE run_id=? "
                               "ORDER BY generation, member, metric", (run_id,))
        return cur.fetchall()
