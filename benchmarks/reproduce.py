"""The reproduction campaign: every table of ``reproductions/`` through ``resprout compare``, its runs kept in
``results/``, its claims judged by code, and ``docs/reproduction.md`` generated from the results.

::

    python -m benchmarks.reproduce                     # every table (make reproduce)
    python -m benchmarks.reproduce ke-table2 --jobs 2  # one table, two worker processes
    python -m benchmarks.reproduce --from-results      # rebuild the page from results/ alone, no training
    python -m benchmarks.reproduce --status            # what results/ holds of each table, what is left to run

For each table (see :mod:`benchmarks.reproduction.spec` for the file format):

1. The grid is built from the file as ``resprout compare`` builds it (every key checked before anything runs).
2. A run already recorded in ``results/<table>.csv`` with the same label, seed and configuration fingerprint is
   reused, never trained again, even in a fresh clone without the store. So is a run that another table (or this
   table under another label) trained with the same configuration (without teachers: a teacher is trained per
   table), from that table's rows in ``results/`` or its finished run in the work folder; it is recorded under this
   row's label, its ``run`` column naming where it came from (``<table>/<run>``), and the page says which rows are
   shared.
3. The other runs train in a git-ignored work folder, ``runs/reproduce/<table>/`` (a compare directory: finished
   runs in its store are reused, interrupted ones continue from their checkpoints), after the file's dependencies
   (``[depends.<name>]``, e.g. a teacher) in ``runs/reproduce/<table>-depends/``.
4. Every finished run is written to ``results/<table>.csv`` (and its per-image test correctness to
   ``results/<table>.correct.csv``) as soon as the table's comparison ends or is interrupted.

The evaluation design: the reproduction files set ``eval_every`` beyond any run's epochs, so a run evaluates only
at the last epoch of each generation, on the whole test set (10,000 Fashion-MNIST images), where the engine also
saves the per-image correctness; nothing evaluates 10,000 images every few epochs during training. The claims use
the last-epoch numbers, as the papers report them; "best" is then the best of the generations' ends.

Nothing is committed by this script: commit ``results/``, ``docs/reproduction.md``, its figures and the README's
summary when the runs are worth keeping.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reproduction import report as rep  # noqa: E402
from benchmarks.reproduction import results as res  # noqa: E402
from benchmarks.reproduction.spec import Spec, load_all  # noqa: E402
from resprout.errors import ConfigError, Interrupted, ResproutError  # noqa: E402

REPRODUCTIONS = ROOT / "reproductions"
WORK = ROOT / "runs" / "reproduce"


def compare_args(spec: Spec, jobs: int, threads: int | None) -> list[str]:
    """The comparison's own keys; the shared keys and rows go to compare() typed, from the file."""
    return [f"seeds={','.join(map(str, spec.seeds))}", f"budget={spec.budget}", "baseline=none", f"jobs={jobs}",
            f"threads={threads or jobs}"]


def dependency_dirs(spec: Spec, work: Path) -> dict[str, Path]:
    return {name: work / f"{spec.name}-depends" / name for name in spec.depends}


def dependency_config(spec: Spec, name: str):
    """A dependency's configuration: the table's shared keys under its own (its data must be the rows' data)."""
    from resprout.compare.grid import route_key
    from resprout.config import make_config, merge

    raw: dict = {}
    for k, v in {**spec.keys, **spec.depends[name], "progress": "none"}.items():
        layer: dict = {}
        route_key(layer, k, v, from_text=False)
        raw = merge(raw, layer)
    return make_config(raw)


def teacher_refs(spec: Spec, work: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(dependency name -> its run directory, run directory -> "@name:<fingerprint>") for the rows' teachers."""
    dirs = dependency_dirs(spec, work)
    paths, refs = {}, {}
    for name, d in dirs.items():
        fp = res.portable_fingerprint(dependency_config(spec, name))
        paths[name] = str(d.resolve())
        refs[str(d.resolve())] = f"@{name}:{fp}"
    return paths, refs


def current_fingerprints(spec: Spec, work: Path, jobs: int = 1):
    """(grid, (label, seed) -> portable fingerprint of every run the file now asks for, dependencies included)."""
    from resprout.compare.grid import build_grid

    paths, refs = teacher_refs(spec, work)
    grid = build_grid(compare_args(spec, jobs, None), rows=spec.row_specs(paths), shared=spec.keys, cpu_count=1)
    current = {(c.label, c.seed): res.portable_fingerprint(c.config, refs) for c in grid.cells}
    for name in spec.depends:
        cfg = dependency_config(spec, name)
        current[(name, cfg.seed)] = res.portable_fingerprint(cfg)
    return grid, current, refs


def _record(spec: Spec, exported: list[tuple[list[dict], list[dict]]], folder: Path) -> None:
    rows, bits = res.read(spec.name, folder)
    for new_rows, new_bits in exported:
        rows = res.merge(rows, new_rows)
        bits = res.merge(bits, new_bits)
    res.write(spec.name, rows, bits, folder, order=[r.label for r in spec.rows] + list(spec.depends))


def train_dependencies(spec: Spec, work: Path, done: dict, current: dict, stream, threads: int) -> list:
    """Train (or continue) every dependency not recorded in results/, alone, with ``threads``; its rows,
    exported."""
    from resprout.run import train

    exported = []
    for name, d in dependency_dirs(spec, work).items():
        cfg = dependency_config(spec, name)
        if done.get((name, cfg.seed)) == current[(name, cfg.seed)] and (d / "checkpoint.pt").exists():
            continue
        stream.write(f"reproduce {spec.name}: dependency {name} ({cfg.model}, {cfg.epochs} epochs) in {d}\n")
        train(cfg, out=d, store=d.parent / "resprout.db", threads=threads)
        exported.append(res.export_run(d, name, role="dependency"))
    return exported


def _wanted_member(spec: Spec, label: str) -> str | None:
    row = spec.row(label)
    return row.member if row else None


def trained_elsewhere(spec: Spec, cells: list, current: dict, work: Path, folder: Path
                      ) -> dict[str, tuple[list[dict], list[dict]]]:
    """Cell key -> (rows, bit rows), relabelled for this table, of each of ``cells`` that another table, or this
    table under another label, already trained with the same configuration: its rows in ``results/``, else its
    finished run in the work folder. Only runs without teachers (a teacher is trained per table, so a student
    depends on which table trained it) and reporting the member the row asks for."""
    from resprout.engine.rundir import SavedRun

    # the fingerprint holds the seed and the teachers (as a path here, never equal to a teacherless cell's)
    wanted = {(c.label, c.seed): c for c in cells if not c.config.teacher}
    by_fp: dict[str, list] = {}
    for key, c in wanted.items():
        by_fp.setdefault(current[key], []).append(c)
    found: dict[str, tuple[list[dict], list[dict]]] = {}
    if not by_fp:
        return found

    def member_fits(c, member: str) -> bool:
        want = _wanted_member(spec, c.label)
        return member == want if want else member in ("model", "peer_1")

    def take(c, rows: list[dict], bits: list[dict], origin: str) -> None:
        # ``run`` names the table that trained it (already so when that table had it from another)
        found[c.key] = ([{**r, "label": c.label, "role": "row",
                          "run": r["run"] if "/" in (r["run"] or "") else f"{origin}/{r['run']}"} for r in rows],
                        [{**b, "label": c.label} for b in bits])

    for path in sorted(folder.glob("*.csv")):
        name = path.stem
        if name.endswith(".correct"):
            continue
        rows, bits = res.read(name, folder)
        for r in rows:
            for c in by_fp.get(r["fingerprint"], []):
                if (c.key not in found and r["final"] == 1 and r["status"] == "finished" and r["role"] == "row"
                        and member_fits(c, r["member"]) and (name, r["label"]) != (spec.name, c.label)):
                    same = [x for x in rows if (x["label"], x["seed"]) == (r["label"], r["seed"])]
                    take(c, same, [b for b in bits if (b["label"], b["seed"]) == (r["label"], r["seed"])], name)
    for d in sorted(work.glob("*/runs/*")):
        table = d.parent.parent.name
        if not SavedRun.exists(d) or not _finished(d.parent.parent, d.name):
            continue
        cfg = SavedRun.open(d).config
        for c in by_fp.get(res.portable_fingerprint(cfg), []):
            if c.key not in found and (table, d.name) != (spec.name, c.key):
                rows, bits = res.export_run(d, c.label, member=_wanted_member(spec, c.label))
                if member_fits(c, rows[0]["member"]):
                    take(c, rows, bits, table)
    return found


def run_table(spec: Spec, jobs: int, threads: int | None, work: Path, folder: Path, stream=sys.stderr) -> str:
    """Train what results/ lacks for one table and record it; returns the comparison's status."""
    from resprout.compare import compare

    grid, current, refs = current_fingerprints(spec, work, jobs)
    recorded, _ = res.read(spec.name, folder)
    done = res.finished_runs(recorded)
    reused = {c.key for c in grid.cells if done.get((c.label, c.seed)) == current[(c.label, c.seed)]}
    own = {c.key for c in grid.cells if c.key not in reused and _finished_here(work / spec.name, c, current)}
    elsewhere = trained_elsewhere(spec, [c for c in grid.cells if c.key not in reused | own], current, work, folder)
    if elsewhere:
        _record(spec, list(elsewhere.values()), folder)
    todo = [c for c in grid.cells if c.key not in reused and c.key not in elsewhere]
    stream.write(f"reproduce {spec.name}: {len(grid.cells)} runs, {len(reused)} recorded in results/ (reused), "
                 f"{len(elsewhere)} trained by another table or row (reused), {len(todo)} to run or continue\n")
    if not todo:
        return "finished"
    needed = {spec.uses_dependency(spec.row(c.label)) for c in todo if spec.row(c.label)} - {None}
    exported = train_dependencies(spec, work, done, current, stream, threads or jobs) if needed else []
    if exported:
        _record(spec, exported, folder)
    paths, _ = teacher_refs(spec, work)
    out = work / spec.name
    set_aside(todo, out / "runs", stream)
    status = "finished"
    try:
        result = compare(compare_args(spec, jobs, threads), out, rows=spec.row_specs(paths),
                         skip=reused | set(elsewhere), shared=spec.keys, stream=stream)
        status = result["status"]
    except Interrupted:
        status = "interrupted"
        raise
    finally:  # whatever finished is recorded, also when the comparison was stopped
        _record(spec, [res.export_run(out / "runs" / c.key, c.label, member=_wanted_member(spec, c.label),
                                      teachers=refs)
                       for c in todo if _finished(out, c.key)], folder)
    return status


def set_aside(cells: list, runs_dir: Path, stream) -> None:
    """Rename the run directories that hold a run of another configuration (the reproduction file changed since)
    to ``<name>.old-<fingerprint>``, so that the comparison can train the new one; nothing is deleted."""
    from resprout.engine.rundir import SavedRun

    for c in cells:
        d = runs_dir / c.key
        if not SavedRun.exists(d):
            continue
        old = SavedRun.open(d).config.fingerprint()
        if old != c.config.fingerprint():
            d.rename(d.with_name(f"{d.name}.old-{old}"))
            stream.write(f"reproduce: {d} held a run of another configuration; moved to {d.name}.old-{old}\n")


def _finished_here(out: Path, cell, current: dict) -> bool:
    """Whether the table's own work folder holds the cell's run, finished, of the configuration the file now gives
    (the comparison reuses it: nothing is shared in its place)."""
    from resprout.engine.rundir import SavedRun

    if not _finished(out, cell.key):
        return False
    return res.portable_fingerprint(SavedRun.open(out / "runs" / cell.key).config) == current[(cell.label, cell.seed)]


def _finished(out: Path, key: str) -> bool:
    from resprout.engine.rundir import SavedRun
    from resprout.engine.store import Store

    d = out / "runs" / key
    if not SavedRun.exists(d) or not (out / "resprout.db").exists():
        return False
    with Store(out / "resprout.db") as store:
        rec = store.run(SavedRun.open(d).run_id)
    return rec is not None and rec.status == "finished"


def rebuild(specs: list[Spec], work: Path, folder: Path, doc: Path = rep.DOC, readme: Path = rep.README,
            figures: Path = rep.FIGURES) -> list[rep.TableResult]:
    """Every table, figure, docs/reproduction.md, the README's summary and the claims blocks of the pages beside
    the doc (:func:`benchmarks.reproduction.report.write_claims_blocks`), from results/ alone."""
    data = {spec.name: rep.recorded(spec.name, current_fingerprints(spec, work)[1], folder) for spec in specs}
    tables = []
    for spec in specs:
        t = rep.build(spec, data)
        rep.figure(t, figures / f"{spec.name}.png")
        tables.append(t)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(rep.page(tables, doc, figures))
    rep.write_readme(tables, readme)
    rep.write_claims_blocks(tables, doc)
    return tables


def campaign_status(specs: list[Spec], every: list[Spec], work: Path, folder: Path) -> str:
    """What ``results/`` holds of each of ``specs``, as a table: its runs recorded for the configuration its file now
    gives (dependencies included), its claims that have runs to test (reading ``every`` table's rows), and the
    training time of those runs."""
    from resprout.analysis.tables import format_table

    fps = {s.name: current_fingerprints(s, work)[1] for s in every}
    data = {name: rep.recorded(name, fp, folder) for name, fp in fps.items()}
    body = []
    for spec in specs:
        finals = [r for r in data[spec.name].rows if r["final"] == 1]
        tested = sum(o.paired is not None for o in rep.build(spec, data).outcomes)
        minutes = sum(r["train_seconds"] or 0 for r in finals) / 60
        body.append([spec.name, f"{len(finals)} of {len(fps[spec.name])}", f"{tested} of {len(spec.claims)}",
                     f"{minutes:.0f}", "complete" if len(finals) == len(fps[spec.name]) else
                     f"python -m benchmarks.reproduce {spec.name}"])
    return format_table(["reproduction", "runs recorded", "claims with runs", "train min (recorded runs)",
                         "to complete it"], body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.reproduce", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="reproductions to run (file stems under reproductions/; default all)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes of each comparison (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="total threads, split between the jobs (default: "
                                                              "one per job)")
    ap.add_argument("--from-results", action="store_true", help="train nothing: rebuild the tables, figures and "
                                                                "docs/reproduction.md from results/")
    ap.add_argument("--status", action="store_true", help="train and write nothing: list what results/ holds of "
                                                          "each table and what is left to run")
    ap.add_argument("--dir", default=str(REPRODUCTIONS), help=argparse.SUPPRESS)
    ap.add_argument("--results", default=str(res.RESULTS), help=argparse.SUPPRESS)
    ap.add_argument("--work", default=str(WORK), help=argparse.SUPPRESS)
    ap.add_argument("--doc", default=str(rep.DOC), help=argparse.SUPPRESS)
    ap.add_argument("--readme", default=str(rep.README), help=argparse.SUPPRESS)
    ap.add_argument("--figures", default=str(rep.FIGURES), help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    folder, work = Path(ns.results), Path(ns.work)
    try:
        if ns.jobs < 1:
            raise ConfigError(f"bad value for --jobs: {ns.jobs} (an integer >= 1)")
        specs = load_all(Path(ns.dir), ns.names or None)
        for spec in specs:  # every file checked before anything trains
            current_fingerprints(spec, work, ns.jobs)
        every = load_all(Path(ns.dir))
        if ns.status:
            print(campaign_status(specs, every, work, folder))
            return 0
        rep.check_claims_blocks({s.name for s in every}, Path(ns.doc))  # and the pages the rebuild will write
        code = 0
        if not ns.from_results:
            for spec in specs:
                t0 = time.monotonic()
                status = run_table(spec, ns.jobs, ns.threads, work, folder)
                print(f"reproduce {spec.name}: {status} in {(time.monotonic() - t0) / 60:.1f} min", file=sys.stderr)
                code = code or (0 if status == "finished" else 1)
        tables = rebuild(every, work, folder, Path(ns.doc), Path(ns.readme), Path(ns.figures))
        for t in tables:
            if t.spec in specs or t.spec.name in {s.name for s in specs}:
                c = rep.counts(t.outcomes)
                print(f"{t.spec.name}: " + ", ".join(f"{v} {k}" for k, v in c.items()))
        return code
    except Interrupted as e:
        # the comparison's own message already says how to continue
        print(f"reproduce: {e}", file=sys.stderr)
        return 130
    except ResproutError as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
