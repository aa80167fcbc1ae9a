"""Running a grid: one run after another in this process (``jobs=1``) or in up to ``jobs`` worker processes, with
progress over the whole grid.

Every cell is an ordinary run directory (``OUT/runs/<cell>``) reporting to ``OUT/resprout.db``, so the machinery of
``resprout train`` does the rest: a finished run is skipped, an interrupted one continues from its checkpoint, and
its lock keeps two processes out of one directory.

Workers are long-lived processes (``python -m resprout.compare.worker``; imports paid once per worker, not per run)
that take cells on stdin and report on their own stdout. They run in their own session, so a Ctrl-C at the
terminal reaches only this process, which passes exactly one SIGINT to each busy worker (its run checkpoints at
the next step and stops; a second Ctrl-C aborts at once). A worker also gets SIGTERM when this process dies
(``PR_SET_PDEATHSIG``), so a killed comparison leaves checkpointed runs, not orphans.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from resprout.compare.grid import Cell, Grid
from resprout.engine.progress import Progress
from resprout.engine.rundir import CHECKPOINT_NAME, LOCK_FILE, SavedRun, holder_alive, lock_holder
from resprout.engine.store import Store
from resprout.errors import Interrupted, ResproutError



def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def finished_cells(grid: Grid, runs_dir: Path, store_path: Path) -> set[str]:
    """The cells whose run is finished in the store (reused, never trained again)."""
    done = set()
    if not store_path.is_file():
        return done
    with Store(store_path) as store:
        for c in grid.cells:
            d = runs_dir / c.key
            if SavedRun.exists(d):
                rec = store.run(SavedRun.open(d).run_id)
                if rec is not None and rec.status == "finished":
                    done.add(c.key)
    return done


def clear_stale_start(run_dir: Path) -> None:
    """A run killed after taking its lock but before writing ``run.json`` leaves a directory holding only a dead
    lock; ``resprout train`` would refuse it as foreign. Remove that lock (nothing else) so the run can start."""
    if not run_dir.is_dir() or SavedRun.exists(run_dir):
        return
    if holder_alive(lock_holder(run_dir)) is False:
        for f in run_dir.iterdir():
            if f.name == LOCK_FILE or f.name.startswith(LOCK_FILE + "."):
                f.unlink(missing_ok=True)


def busy(run_dir: Path) -> bool:
    """Another live process holds the run's lock (e.g. a worker of a killed comparison finishing its step)."""
    return holder_alive(lock_holder(run_dir)) is not False


@dataclass
class GridStatus:
    """Progress over the whole grid: runs done / running / left, epochs, and an ETA from this invocation's pace."""

    grid: Grid
    done: set[str]
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    fraction: dict[str, float] = field(default_factory=dict)  # cell -> share of its steps done
    running: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    interrupted: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.t0 = time.monotonic()
        self.cells = {c.key: c for c in self.grid.cells}
        self.units_at_start: float | None = None

    def units(self) -> tuple[float, int]:
        """(epochs done, epochs in all) over the grid."""
        total = sum(c.total_epochs for c in self.grid.cells)
        done = sum(c.total_epochs * (1.0 if k in self.done else self.fraction.get(k, 0.0))
                   for k, c in self.cells.items())
        return done, total

    def header(self) -> str:
        left = len(self.cells) - len(self.done) - len(self.running)
        done_units, total = self.units()
        if self.units_at_start is None:
            self.units_at_start = done_units
        pace = (done_units - self.units_at_start) / max(time.monotonic() - self.t0, 1e-9)
        eta = _duration((total - done_units) / pace) if pace > 0 else "?"
        return (f"[{len(self.done)}/{len(self.cells)} done, {len(self.running)} running, {left} left | "
                f"{done_units:.0f}/{total} epochs | ETA {eta}]")

    def say(self, text: str) -> None:
        self.stream.write(f"{self.header()} {text}\n")
        self.stream.flush()

    # events of a cell
    def begin(self, key: str, resumed: bool = False) -> None:
        self.running.add(key)
        self.say(f"{key}: {'continuing from its checkpoint' if resumed else 'starting'}")

    def steps(self, key: str, done: int, total: int) -> None:
        self.fraction[key] = done / max(total, 1)

    def epoch(self, key: str, line: str) -> None:
        self.say(f"{key}: {line.strip()}")

    def end(self, key: str, status: str, detail: str = "", code: int = 1) -> None:
        self.running.discard(key)
        if status == "finished":
            self.done.add(key)
            self.fraction[key] = 1.0
        elif status == "interrupted":
            self.interrupted.add(key)
        else:
            self.failed[key] = (code, detail)
        self.say(f"{key}: {status}{(': ' + detail) if detail else ''}")


class CellProgress(Progress):
    """The trainer's progress interface, forwarded to the grid (in this process)."""

    def __init__(self, status: GridStatus, key: str) -> None:
        self.status, self.key = status, key
        self.total, self.done = 1, 0

    def start(self, total_steps: int, done_steps: int = 0) -> None:
        self.total, self.done = total_steps, done_steps
        self.status.steps(self.key, self.done, self.total)

    def step(self, loss: float) -> None:
        self.done += 1
        self.status.steps(self.key, self.done, self.total)

    def end_epoch(self, line: str) -> None:
        self.status.epoch(self.key, line)

    def message(self, line: str) -> None:
        if line.startswith("gen "):  # the end of a generation; other messages are the trainer's own notices
            self.status.epoch(self.key, line)


def run_cell(cell: Cell, runs_dir: Path, store_path: Path, progress: Progress) -> dict:
    """Train (or continue) one cell's run in this process."""
    from resprout.run import train

    out = runs_dir / cell.key
    clear_stale_start(out)
    return train(cell.config, out=out, store=store_path, progress=progress)


def _order(cells: list[Cell]) -> list[Cell]:
    # seeds outermost: an early stop leaves complete rows for the first seeds
    return sorted(cells, key=lambda c: c.seed)


def _stop_now(signum, frame) -> None:
    # between runs, or while a run is being built: nothing to checkpoint, stop at once (while a run trains, its
    # trainer's own handler replaces this one and stops at the next step with a checkpoint)
    raise Interrupted("interrupted between runs")


def run_here(grid: Grid, todo: list[Cell], runs_dir: Path, store_path: Path, status: GridStatus) -> None:
    main = threading.current_thread() is threading.main_thread()  # signals can be caught there only
    previous = {s: signal.signal(s, _stop_now) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        _run_here(todo, runs_dir, store_path, status)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _run_here(todo: list[Cell], runs_dir: Path, store_path: Path, status: GridStatus) -> None:
    pending = _order(todo)
    while pending:
        free = [c for c in pending if not busy(runs_dir / c.key)]
        if not free:
            time.sleep(0.5)
            continue
        cell = free[0]
        pending.remove(cell)
        status.begin(cell.key, (runs_dir / cell.key / CHECKPOINT_NAME).exists())
        try:
            run_cell(cell, runs_dir, store_path, CellProgress(status, cell.key))
        except Interrupted:
            status.end(cell.key, "interrupted")
            raise
        except ResproutError as e:
            status.end(cell.key, "failed", str(e), e.exit_code)
            continue
        status.end(cell.key, "finished")


# -- worker processes -------------------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In the worker before exec: SIGTERM when the comparison's process dies (Linux prctl; elsewhere a no-op,
    and the worker still ends when its stdin closes)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Worker:
    def __init__(self, threads: int) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen([sys.executable, "-m", "resprout.compare.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1, env=env,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        self.cell: Cell | None = None
        self.buffer = b""

    def give(self, cell: Cell, runs_dir: Path, store_path: Path) -> None:
        self.cell = cell
        job = {"key": cell.key, "config": cell.config.to_dict(), "out": str(runs_dir / cell.key),
               "store": str(store_path)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def signal(self, sig: int) -> None:
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            pass


def run_workers(grid: Grid, todo: list[Cell], runs_dir: Path, store_path: Path, status: GridStatus) -> None:
    pending = _order(todo)
    stopping = {"n": 0}

    def on_signal(signum, frame) -> None:
        stopping["n"] += 1
        if stopping["n"] == 1:
            status.say("stopping: every running run checkpoints at its next step (Ctrl-C again to abort at once)")
        for w in workers:
            if w.cell is not None:
                w.signal(signal.SIGINT)  # the first: checkpoint and stop; a second: abort
            else:
                w.close()

    sel = selectors.DefaultSelector()
    workers: list[Worker] = []

    def spawn() -> Worker:
        w = Worker(grid.threads)
        workers.append(w)
        sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        return w

    def next_free() -> Cell | None:
        for c in pending:
            if not busy(runs_dir / c.key):
                pending.remove(c)
                return c
        return None

    def feed(w: Worker) -> None:
        if stopping["n"]:
            w.close()
            return
        cell = next_free()
        if cell is None:
            if not pending:
                w.close()
            return  # busy cells only: try again on the next tick
        status.begin(cell.key, (runs_dir / cell.key / CHECKPOINT_NAME).exists())
        w.give(cell, runs_dir, store_path)

    def handle(w: Worker, msg: dict) -> None:
        key = msg["key"]
        if msg["event"] in ("steps", "epoch"):
            status.steps(key, msg["done"], msg["total"])
            if msg["event"] == "epoch":
                status.epoch(key, msg["line"])
        elif msg["event"] == "end":
            w.cell = None
            status.end(key, msg["status"], msg.get("error", ""), msg.get("code", 1))
            if msg["status"] == "interrupted" and not stopping["n"]:
                stopping["n"] = 1  # a run was stopped from outside: stop the grid the same way
                status.say("a run was interrupted; stopping the grid")
                for other in workers:
                    if other.cell is not None:
                        other.signal(signal.SIGINT)
            feed(w)

    # The store is created here, before any worker: two processes creating one new SQLite file at once race on
    # its schema and journal mode ("database is locked", even "disk I/O error"); an existing WAL store is safe.
    Store(store_path).close()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for _ in range(min(grid.jobs, len(pending))):
            feed(spawn())
        while workers:
            for w in [w for w in workers if w.cell is None and not w.proc.stdin.closed]:
                feed(w)  # idle (waiting for a busy cell to free)
            for sk, _ in sel.select(timeout=0.5):
                w: Worker = sk.data
                chunk = os.read(w.proc.stdout.fileno(), 1 << 16)  # raw: a buffered readline would hide lines
                w.buffer += chunk                                  # from select()
                if not chunk:  # the worker ended
                    sel.unregister(w.proc.stdout)
                    code = w.proc.wait()
                    workers.remove(w)
                    if w.cell is not None:
                        status.end(w.cell.key, "interrupted" if stopping["n"] else "failed",
                                   "" if stopping["n"] else f"its worker process exited with code {code}")
                    if pending and not stopping["n"] and len(workers) < grid.jobs:
                        feed(spawn())
                    continue
                *lines, w.buffer = w.buffer.split(b"\n")
                for line in lines:
                    handle(w, json.loads(line))
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for w in workers:
            w.close()
            w.signal(signal.SIGTERM)
            w.proc.wait()
    if stopping["n"]:
        raise Interrupted("comparison interrupted")
