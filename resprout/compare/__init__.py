"""``resprout compare``: every method on the same data, split, seeds and budget, and the table the papers print.

::

    resprout compare method=ce,ls,ke,ke+ls seeds=0,1,2 data=digits model=cnn epochs=5 generations=3 --out cmp
    resprout compare ... budget=per-method jobs=2 threads=2 baseline=ce
    resprout compare method=ce row.noise="graft graft.scion=noise" row.ce-2x="ce epochs=10" ... --out cmp2

Keys of the comparison itself: ``method`` (comma-separated; a composition is ``ke+ls``), ``row.<label>`` (a row
with its own keys: ``"<method> key=value ..."``), ``seeds`` (default 0),
``budget`` (``equal``, default, or ``per-method``), ``jobs`` (worker processes, default 1: in this process),
``baseline`` (the method of the equal-compute baseline, default ``ce``; ``none`` leaves it out). ``threads`` is the
comparison's total, split evenly between the jobs. Every other key (``data``, ``model``, ``epochs``,
``generations``, ``lr``, ``ke.split_rate``, ...) is shared by every run; ``<method>.<option>`` goes to the runs
that use that method. How epochs and generations become each method's budget: :mod:`resprout.compare.grid`.

Before any run starts, every cell is checked (its config, and its data, model and methods built as the run will
build them): a method that cannot run is one line, exit 2, and nothing is written. ``DIR`` then holds
``runs/<label>-<G>x<E>-s<seed>/`` (ordinary run directories; a row's label is its method unless it has keys of
its own), the store ``resprout.db``, ``compare.json``,
``comparison.md`` and ``comparison.png``. Running the same command again reuses finished runs and continues
interrupted ones (Ctrl-C stops every run at a checkpoint).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from resprout.compare.grid import Cell, Grid, RowSpec, build_grid, check_run_dirs, grid_summary
from resprout.errors import ConfigError, Interrupted

COMPARE_FILE = "compare.json"
RUNS = "runs"
STORE = "resprout.db"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"compare --out {out} is an existing file, not a directory; nothing was changed")
    # a directory holding only a lock (a comparison killed as it started) counts as empty
    if out.is_dir() and any(not f.name.startswith(".lock") for f in out.iterdir()) and \
            not (out / COMPARE_FILE).exists():
        raise ConfigError(f"compare --out {out} is not empty and is not a resprout comparison (no {COMPARE_FILE}); "
                          f"nothing was changed: choose another --out")


def rows_of(grid: Grid, runs_dir: Path, keys: set[str] | None = None):
    """The table rows (one per method and budget, in the grid's order) of the cells that finished."""
    from resprout.analysis.comparison import Row
    from resprout.analysis.report import load_run

    rows = []
    for group, cells in grid.groups().items():
        done = [c for c in cells if keys is None or c.key in keys]
        if not done:
            continue
        first = done[0]
        row = Row(first.label, first.generations, first.epochs, first.baseline)
        for c in done:
            row.runs.append(load_run(runs_dir / c.key))
            row.seeds.append(c.seed)
        rows.append(row)
    return rows


def _caption(grid: Grid, sizes: dict, rows) -> str:
    from resprout.engine.precision import describe

    b = grid.base
    data = b.get("data", "digits") + (f", {b['per_class']} train images per class" if "per_class" in b else "")
    shape = f"E = {grid.epochs} epochs x G = {grid.generations} generations"
    budget = ("budget=equal: every run trains E x G epochs" if grid.budget == "equal" else
              "budget=per-method: a method that uses generations trains G x E epochs, the others E")
    base = (f"; the equal-compute baseline is {grid.baseline} for E x G = {grid.epochs * grid.generations} epochs "
            f"under one schedule" if grid.baseline else "")
    # the threads the runs were trained with (the store's environment), not this invocation's setting
    threads = "/".join(str(t) for t in sorted({run.record.env.get("threads") for row in rows for run in row.runs
                                               if run.record.env.get("threads") is not None})) or "?"
    # how they computed, as each run resolved it (precision=auto and channels_last=auto differ between machines)
    how = "/".join(sorted({describe(run.record.config.get("precision", "fp32"),
                                    bool(run.record.config.get("channels_last"))) for row in rows for run in row.runs}))
    return (f"data={data} ({sizes.get('train', '?')} train, {sizes.get('val', 0)} val, {sizes.get('test', '?')} "
            f"test images), model={b.get('model', 'cnn')}, seeds {','.join(map(str, grid.seeds))}; {shape}; "
            f"{budget}{base}. Top-1 in %, mean ± std over seeds; trained with {threads} thread(s) per run"
            f"{', in ' + how if how else ''}.")


def compare(args: list[str], out: str | Path, *, stream=None, rows: list[RowSpec] | None = None,
            skip: set[str] | None = None, shared: dict | None = None) -> dict:
    """Run (or continue) the comparison of ``key=value`` ``args`` (and ``rows`` given from Python) in ``out``;
    returns ``{"table", "files", "summary", "failed", "status"}``. Raises :class:`~resprout.errors.Interrupted`
    when stopped. ``shared``: keys shared by every row, typed (as a TOML file gives them).

    ``skip``: keys of cells whose results are kept elsewhere (``benchmarks.reproduce`` reuses the runs recorded
    under ``results/``): they are neither probed nor trained, and are not in this comparison's table."""
    from resprout.analysis.comparison import generation_table, plot, summary, table
    from resprout.compare.probe import probe_grid
    from resprout.compare.runner import GridStatus, finished_cells, run_here, run_workers
    from resprout.engine.rundir import RunLock

    stream = stream or sys.stderr
    out = Path(out)
    grid = build_grid(args, rows=rows, shared=shared)
    if skip:
        grid.cells = [c for c in grid.cells if c.key not in skip]
    _check_out(out)
    runs_dir, store_path = out / RUNS, out / STORE
    check_run_dirs(grid, runs_dir)  # before anything is built or written
    t0 = time.monotonic()
    sizes = probe_grid(grid) if grid.cells else {}
    stream.write(f"compare: {len(grid.cells)} runs checked in {time.monotonic() - t0:.1f}s "
                 f"({len(grid.groups())} methods/budgets x {len(grid.seeds)} seeds)\n")
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out).acquire()  # one comparison at a time in a directory
    try:
        info = {"args": list(args), "sizes": sizes, **grid_summary(grid), "updated": time.time()}
        if rows:
            info["rows"] = [{"label": r.label, "method": r.method, "keys": r.keys} for r in rows]
        if shared:
            info["shared"] = shared
        (out / COMPARE_FILE).write_text(json.dumps(info, indent=2))
        done = finished_cells(grid, runs_dir, store_path)
        todo = [c for c in grid.cells if c.key not in done]
        status = GridStatus(grid, set(done), stream=stream)
        status.say(f"{len(done)} finished already (reused), {len(todo)} to run with jobs={grid.jobs}, "
                   f"{grid.threads} thread(s) each, in {out}")
        try:
            if todo:
                (run_here if grid.jobs == 1 else run_workers)(grid, todo, runs_dir, store_path, status)
        except Interrupted:
            left = len(grid.cells) - len(status.done)
            raise Interrupted(f"comparison interrupted: {len(status.done)} of {len(grid.cells)} runs finished, "
                              f"{left} left (their checkpoints are kept); run the same command again to continue")\
                from None
        done_rows = rows_of(grid, runs_dir, status.done)
        caption = _caption(grid, sizes, done_rows)
        text = table(done_rows, sizes)
        gens = generation_table(done_rows)
        md = f"{caption}\n\n{text}\n"
        if gens:
            md += f"\nLast-epoch test top-1 of each generation N_g (mean ± std over seeds):\n\n{gens}\n"
        if status.failed:
            md += "\nRuns that failed (not in the table):\n\n" + "".join(
                f"- {k}: {detail}\n" for k, (code, detail) in status.failed.items())
        files = [out / "comparison.md", out / "comparison.png"]
        files[0].write_text(md + "\n![accuracy against epochs](comparison.png)\n")
        plot(done_rows, files[1], title=f"{grid.base.get('data', 'digits')} / {grid.base.get('model', 'cnn')}")
        result = {"table": md, "files": [str(f) for f in files], "summary": summary(done_rows), "sizes": sizes,
                  "failed": {k: {"code": code, "error": d} for k, (code, d) in status.failed.items()},
                  "status": "failed" if status.failed else "finished"}
        info["results"] = result["summary"]
        (out / COMPARE_FILE).write_text(json.dumps(info, indent=2))
        return result
    finally:
        lock.release()


def exit_code(result: dict) -> int:
    """0 when every run finished, else the exit code of the first failure (3: diverged, 2: refused)."""
    return next((f["code"] for f in result["failed"].values()), 0)


__all__ = ["Cell", "Grid", "RowSpec", "build_grid", "compare", "exit_code"]
