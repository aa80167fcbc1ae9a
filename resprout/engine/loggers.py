"""Dashboard logs: ``metrics.csv`` in every run directory, TensorBoard event files with ``loggers=csv,tensorboard``,
and any object of the user's that follows :class:`Logger`.

The results store (SQLite) stays the source of reports and plots; loggers receive a copy of the same metrics as
they are stored. A logger sees three calls:

* ``log_hparams(config)``: the run's resolved configuration (a flat ``{key: value}`` dict, nested options as
  dotted keys), once per ``fit`` (a resumed run calls it again);
* ``log_metrics(step, member, metrics)``: ``step`` counts the epochs of the whole run, from 1 (generation ``g`` and
  epoch ``e``, both from 0, give ``g * epochs + e + 1``); ``metrics`` maps ``"<split>/<metric>"`` to a float:
  ``train/loss``, ``train/lr``, ``train/seconds``, ``test/top1``, ``val/top1``, ... after every epoch, and
  ``generation/<metric>`` (``generation/test_top1``, KE's ``generation/slim_top1``, ...) at the end of a
  generation, at the step of its last epoch;
* ``close()``.

A logger may also define ``resume(step)``: the run continues from a checkpoint and logs again from ``step`` on, so
a logger that keeps earlier calls drops those at ``step`` and later (the CSV does; TensorBoard is told with
``purge_step``). A crash and resume thus give the same files as an uninterrupted run.

``tensorboard`` needs the optional package (``pip install 'resprout[tensorboard]'``); it is imported only when
chosen, and its absence is one line naming the extra, raised before training starts.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from resprout.errors import ConfigError
from resprout.registry import Registry

CSV_NAME = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
CSV_COLUMNS = ("step", "generation", "epoch", "member", "split", "metric", "value")


@runtime_checkable
class Logger(Protocol):
    """What a logger object passed to ``resprout.train(..., loggers=[...])`` implements."""

    def log_hparams(self, config: dict[str, Any]) -> None: ...

    def log_metrics(self, step: int, member: str, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


#: what ``loggers=`` names: ``factory(run_dir, *, epochs, members)`` -> a :class:`Logger`
LOGGERS: Registry[Callable[..., Logger]] = Registry("logger")


def register_logger(name: str, *, description: str | None = None) -> Callable:
    """Decorator: ``factory(run_dir, *, epochs, members) -> Logger`` becomes ``loggers=<name>`` (``description``:
    default, the factory's docstring)."""

    def deco(factory: Callable[..., Logger]) -> Callable[..., Logger]:
        LOGGERS.add(name, factory, description)
        return factory

    return deco


def parse_logger_names(text: str) -> list[str]:
    """``"csv,tensorboard"`` -> ``["csv", "tensorboard"]``; an empty string or ``none`` means no built-in logger.
    A name that is not in :data:`LOGGERS` is one line (a run checks this when it starts, before writing anything)."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if names == ["none"]:
        return []
    bad = [n for n in names if n not in LOGGERS]
    if bad:
        close = LOGGERS.suggestion(bad[0])
        hint = f"; did you mean {close}?" if close else ""
        raise ConfigError(f"bad value for loggers: {', '.join(bad)} (allowed: a comma-separated list of "
                          f"{', '.join(LOGGERS.names())}, or none{hint})")
    return list(dict.fromkeys(names))


def flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested options as dotted keys; values TensorBoard's hparams accept (numbers, strings, booleans)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:  # None, lists
            out[name] = json.dumps(value)
    return out


def position(step: int, epochs: int, split: str) -> tuple[int, int | None]:
    """(generation, epoch), both from 1, of a metric logged at ``step`` (no epoch for a generation metric)."""
    if split == "generation":
        return (step - 1) // epochs + 1, None
    return (step - 1) // epochs + 1, (step - 1) % epochs + 1


class CSVLogger:
    """``metrics.csv``: one row per value, ``step,generation,epoch,member,split,metric,value`` (generation and epoch
    from 1, as in the epoch line; ``epoch`` empty for ``split=generation``). Long rows, so the file only grows and
    every member and metric fits one header; ``pandas.read_csv(...).pivot_table(...)`` widens it."""

    def __init__(self, path: str | Path, epochs: int) -> None:
        self.path = Path(path)
        self.epochs = epochs
        self._fh = None
        self._writer = None

    def resume(self, step: int) -> None:
        """Keep the rows logged before ``step`` (written atomically), so the next rows continue the file."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as fh:
            rows = [r for r in csv.reader(fh)]
        # a row cut short by a crash is always past the checkpoint (rows are written before it), so dropped too
        kept = [r for r in rows[1:] if len(r) == len(CSV_COLUMNS) and int(r[0]) < step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(CSV_COLUMNS)
            w.writerows(kept)
        os.replace(tmp, self.path)

    def _open(self) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a", newline="")
        self._writer = csv.writer(self._fh)
        if new:
            self._writer.writerow(CSV_COLUMNS)

    def log_hparams(self, config: dict[str, Any]) -> None:
        pass  # the configuration is in run.json

    def log_metrics(self, step: int, member: str, metrics: dict[str, float]) -> None:
        if self._fh is None:
            self._open()
        for key, value in metrics.items():
            split, _, metric = key.partition("/")
            g, e = position(step, self.epochs, split)
            self._writer.writerow((step, g, "" if e is None else e, member, split, metric, repr(float(value))))
        self._fh.flush()  # a crash loses nothing that the store kept

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = self._writer = None


def _import_tensorboard():
    try:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams
    except Exception:  # noqa: BLE001  (torch raises ImportError for a missing package, others for broken ones)
        raise ConfigError("loggers=tensorboard needs the tensorboard package: pip install 'resprout[tensorboard]' "
                          "(or pip install tensorboard)") from None
    return SummaryWriter, hparams


class TensorBoardLogger:
    """TensorBoard event files under ``<run>/tensorboard``: every metric as a scalar tagged
    ``<member>/<split>/<metric>`` (the learning rate is ``<member>/train/lr``), and the configuration as hparams."""

    def __init__(self, logdir: str | Path, members: list[str] | None = None) -> None:
        self.SummaryWriter, self._hparams = _import_tensorboard()
        self.logdir = Path(logdir)
        self.members = list(members or [])
        self._writer = None
        self._purge: int | None = None

    def resume(self, step: int) -> None:
        # events of an earlier attempt at this step or later (a crash after the last checkpoint) are dropped
        self._purge = step

    def _get(self):
        if self._writer is None:
            self._writer = self.SummaryWriter(str(self.logdir), purge_step=self._purge)
        return self._writer

    def log_hparams(self, config: dict[str, Any]) -> None:
        # written into this run's own event file (SummaryWriter.add_hparams would open a new sub-run); the metric
        # names tie the hparams table to the scalars logged under the same tags
        metrics = {f"{m}/test/top1": math.nan for m in self.members}
        exp, ssi, sei = self._hparams(flat_config(config), metrics)
        writer = self._get().file_writer
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)

    def log_metrics(self, step: int, member: str, metrics: dict[str, float]) -> None:
        w = self._get()
        for key, value in metrics.items():
            w.add_scalar(f"{member}/{key}", float(value), global_step=step)
        w.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@register_logger("csv")
def _csv(run_dir: Path, *, epochs: int, members: list[str]) -> CSVLogger:
    """metrics.csv in the run directory: one row per metric value (the default)."""
    return CSVLogger(run_dir / CSV_NAME, epochs)


@register_logger("tensorboard")
def _tensorboard(run_dir: Path, *, epochs: int, members: list[str]) -> TensorBoardLogger:
    """TensorBoard event files under tensorboard/ in the run directory (pip install 'resprout[tensorboard]')."""
    return TensorBoardLogger(run_dir / TENSORBOARD_DIR, members)


class Loggers:
    """The trainer's loggers: the built-in ones the config names plus the user's objects, called in turn."""

    def __init__(self, loggers: list) -> None:
        for lg in loggers:
            missing = [m for m in ("log_hparams", "log_metrics", "close") if not callable(getattr(lg, m, None))]
            if missing:
                raise ConfigError(f"logger {type(lg).__name__} lacks {', '.join(missing)}: a logger implements "
                                  f"log_hparams(config), log_metrics(step, member, metrics) and close()")
        self.loggers = list(loggers)

    @classmethod
    def build(cls, names: str, run_dir: Path | None, epochs: int, members: list[str], extra: list | None = None
              ) -> Loggers:
        """The built-in loggers named in ``names`` (they need a run directory) followed by ``extra``."""
        built: list = []
        for name in parse_logger_names(names):
            if run_dir is None:
                continue  # an unsaved run writes no files
            built.append(LOGGERS.get(name)(run_dir, epochs=epochs, members=members))
        return cls(built + list(extra or []))

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def start(self, step: int, config: dict) -> None:
        """Before the first step of a ``fit``: the run (re)starts at ``step``."""
        for lg in self.loggers:
            if callable(getattr(lg, "resume", None)):
                lg.resume(step)
        hp = flat_config(config)
        for lg in self.loggers:
            lg.log_hparams(hp)

    def log(self, step: int, member: str, metrics: dict[str, float]) -> None:
        if metrics:
            for lg in self.loggers:
                lg.log_metrics(step, member, {k: float(v) for k, v in metrics.items()})

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def split_loggers(value) -> tuple[str | None, list]:
    """``loggers=["csv", "tensorboard", MyLogger()]`` of the Python API -> (``"csv,tensorboard"`` for the config
    key, or None when no name is given, and the objects)."""
    items = list(value)
    names = [x for x in items if isinstance(x, str)]
    return (",".join(names) if names else None), [x for x in items if not isinstance(x, str)]
