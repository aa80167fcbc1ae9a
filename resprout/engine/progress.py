"""Progress display: a live bar with ETA and metrics on a terminal, one plain line per epoch otherwise.

Everything goes to stderr, so ``--json`` output on stdout stays clean. ``make_progress("auto")`` picks the bar
when stderr is a terminal (and not under CI), the plain lines when it is a pipe or a file.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


class Progress:
    """The interface the trainer talks to. This base class shows nothing."""

    def start(self, total_steps: int, done_steps: int = 0) -> None: ...

    def start_epoch(self, label: str, steps: int, done: int = 0) -> None: ...

    def step(self, loss: float) -> None: ...

    def end_epoch(self, line: str) -> None: ...

    def message(self, line: str) -> None: ...

    def close(self) -> None: ...


class PlainProgress(Progress):
    """One line per epoch (and per message), flushed at once: right for CI logs and pipes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def end_epoch(self, line: str) -> None:
        self.message(line)

    def message(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


class BarProgress(Progress):
    """A rich progress bar: the whole run with its ETA, and the current epoch with the running loss."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.console = Console(file=stream or sys.stderr)
        self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"), console=self.console, transient=False)
        self._bar.start()
        self._run = self._bar.add_task("run", total=1, info="")
        self._epoch = None
        self._loss_sum = 0.0
        self._loss_n = 0
        self._last_update = 0.0

    def start(self, total_steps: int, done_steps: int = 0) -> None:
        self._bar.update(self._run, total=max(total_steps, 1), completed=done_steps)

    def start_epoch(self, label: str, steps: int, done: int = 0) -> None:
        if self._epoch is not None:
            self._bar.remove_task(self._epoch)
        self._epoch = self._bar.add_task(label, total=max(steps, 1), completed=done, info="")
        self._loss_sum, self._loss_n = 0.0, 0

    def step(self, loss: float) -> None:
        self._loss_sum += loss
        self._loss_n += 1
        now = time.monotonic()
        self._bar.advance(self._run)
        if self._epoch is not None:
            self._bar.advance(self._epoch)
            if now - self._last_update > 0.2:  # formatting the text every step would cost more than the bar
                self._bar.update(self._epoch, info=f"loss {self._loss_sum / self._loss_n:.4f}")
                self._last_update = now

    def end_epoch(self, line: str) -> None:
        self.message(line)

    def message(self, line: str) -> None:
        self._bar.console.print(line, highlight=False, markup=False)

    def close(self) -> None:
        self._bar.stop()


def make_progress(mode: str = "auto", stream: TextIO | None = None) -> Progress:
    stream = stream or sys.stderr
    if mode == "none":
        return Progress()
    if mode == "auto":
        interactive = hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("CI")
        mode = "bar" if interactive else "plain"
    return BarProgress(stream) if mode == "bar" else PlainProgress(stream)
