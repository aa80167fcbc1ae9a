"""Check every cell of a grid before any run starts: build its data, model, members and methods exactly as the run
will (``resprout.run.create_trainer``, nothing written), and fire the methods' ``on_fit_start`` checks (KE's
traceability and slim dry run, RePr's need of convolutions, ...). A refusal is one line naming the method."""

from __future__ import annotations

from resprout.compare.grid import Grid
from resprout.engine.events import Event
from resprout.engine.method import handlers
from resprout.errors import ConfigError, ResproutError


def probe_grid(grid: Grid) -> dict:
    """Probe one cell per group (cells of a group differ only by seed) and return the split sizes
    ``{"train": n, "val": n, "test": n}`` (the same for every cell: one data configuration)."""
    from resprout.run import create_trainer

    sizes: dict = {}
    for group, cells in grid.groups().items():
        cell = cells[0]
        try:
            trainer = create_trainer(cell.config, run_dir=None, run_id=None, store_path=None, progress="none")
            for h in handlers(trainer.methods, Event.FIT_START):
                h(trainer)
        except ResproutError as e:
            label = "baseline " if cell.baseline and cell.label not in grid.methods else ""
            row = f"row {cell.label!r}, " if cell.label != cell.method else ""
            raise ConfigError(f"{label}{row}method={cell.method} ({cell.generations} x {cell.epochs} epochs) cannot "
                              f"run here: {e}") from None
        ds = trainer.dataset
        if not sizes:
            sizes = {name: (len(getattr(ds, name).labels) if getattr(ds, name) is not None else 0)
                     for name in ("train", "val", "test")}
        del trainer
    return sizes
