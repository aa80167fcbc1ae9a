"""A worker process of ``resprout compare jobs=N`` (``python -m resprout.compare.worker``).

It reads one job per line on stdin (``{"key", "config", "out", "store"}``), trains or continues that run, and
reports JSON lines on its stdout: ``steps`` and ``epoch`` while it trains, ``end`` with ``status`` finished,
interrupted or failed. Anything else it would print goes to stderr. It ends when stdin closes, or after a run was
interrupted (SIGINT/SIGTERM: the run checkpoints at its next step).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from resprout.engine.progress import Progress
from resprout.errors import Interrupted, ResproutError


class _Report(Progress):
    def __init__(self, out, key: str) -> None:
        self.out, self.key = out, key
        self.total, self.done = 1, 0

    def send(self, **msg) -> None:
        self.out.write(json.dumps({"key": self.key, **msg}) + "\n")
        self.out.flush()

    def start(self, total_steps: int, done_steps: int = 0) -> None:
        self.total, self.done = total_steps, done_steps
        self.send(event="steps", done=self.done, total=self.total)

    def step(self, loss: float) -> None:
        self.done += 1

    def end_epoch(self, line: str) -> None:
        self.send(event="epoch", done=self.done, total=self.total, line=line)

    def message(self, line: str) -> None:
        if line.startswith("gen "):
            self.send(event="epoch", done=self.done, total=self.total, line=line)


def main() -> int:
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the report channel; print() and friends go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from resprout.compare.grid import Cell  # noqa: F401  (import the heavy parts once, before the first job)
    from resprout.compare.runner import clear_stale_start
    from resprout.config import make_config
    from resprout.run import train

    try:
        return _serve(out, train, make_config, clear_stale_start)
    except KeyboardInterrupt:  # a signal while idle, between runs: nothing to save
        return 130


def _serve(out, train, make_config, clear_stale_start) -> int:
    for line in sys.stdin:
        job = json.loads(line)
        report = _Report(out, job["key"])
        try:
            clear_stale_start(Path(job["out"]))
            train(make_config(job["config"]), out=job["out"], store=job["store"], progress=report)
        except (Interrupted, KeyboardInterrupt) as e:
            report.send(event="end", status="interrupted", error=str(e) if isinstance(e, Interrupted) else "")
            return 130
        except ResproutError as e:
            report.send(event="end", status="failed", code=e.exit_code, error=str(e))
            continue
        except Exception as e:  # a bug: keep its traceback on stderr, report one line
            traceback.print_exc()
            report.send(event="end", status="failed", code=1, error=f"{type(e).__name__}: {e}")
            continue
        report.send(event="end", status="finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
