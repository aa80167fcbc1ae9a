"""Re-run one recorded reproduction row with this tree's code and compare it with what ``results/`` holds.

::

    python -m benchmarks.rerun ke-table2 "CE, 2x epochs" 0          # table, row label, seed
    python -m benchmarks.rerun ke-table2 "CE, 2x epochs" 0 --threads 1

A refactoring that must "change no number" (issue #20) is checked this way: the row trains afresh from its file's
configuration, in a temporary directory, and its per-image test correctness (the packed bitmask that
``results/<table>.correct.csv`` keeps for every generation) and its top-1 must equal the recorded run's exactly. The
same images right and wrong on the whole test set at every generation is what bit-identical weights give; any
change in the arithmetic moves some of them. The outcome is written to BENCHMARKS.md (section ``rerun``).

Rows trained from a dependency (a teacher) are refused: their teacher would have to be trained again too. The run
uses the recorded run's thread count unless told otherwise, and always its precision: a different thread count,
device or precision can change the last bits.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from benchmarks.reproduce import REPRODUCTIONS, current_fingerprints  # noqa: E402
from benchmarks.reproduction import results as res  # noqa: E402
from benchmarks.reproduction.spec import load_all  # noqa: E402
from resprout.errors import ConfigError, ResproutError  # noqa: E402


def recorded_run(table: str, label: str, seed: int, folder: Path = res.RESULTS) -> tuple[list[dict], list[dict]]:
    """The recorded rows (one per generation) and correctness bits of (label, seed), finished."""
    rows, bits = res.read(table, folder)
    mine = [r for r in rows if r["label"] == label and r["seed"] == seed and r["status"] == "finished"]
    if not mine:
        have = sorted({(r["label"], r["seed"]) for r in rows if r["status"] == "finished"})
        raise ConfigError(f"results/{table}.csv has no finished run of row {label!r} seed {seed}; recorded: "
                          + (", ".join(f"{lab!r} seed {s}" for lab, s in have) or "none"))
    return mine, [b for b in bits if b["label"] == label and b["seed"] == seed]


def compare_runs(old_rows: list[dict], old_bits: list[dict], new_rows: list[dict], new_bits: list[dict]
                 ) -> list[str]:
    """The differences between a recorded run and its re-run (empty: identical), one line each."""
    diffs = []
    old_top1 = {r["generation"]: r["top1"] for r in old_rows}
    new_top1 = {r["generation"]: r["top1"] for r in new_rows}
    for g in sorted(old_top1.keys() | new_top1.keys()):
        a, b = old_top1.get(g), new_top1.get(g)
        if a is None or b is None or abs(float(a) - float(b)) > 1e-12:
            diffs.append(f"generation {g}: top-1 {a} recorded, {b} now")
    old_b = {b["generation"]: b for b in old_bits}
    new_b = {b["generation"]: b for b in new_bits}
    if not old_b:
        diffs.append("the recorded run has no per-image correctness to compare")
    for g in sorted(old_b):
        if g not in new_b:
            diffs.append(f"generation {g}: no per-image correctness in the re-run")
        elif (old_b[g]["bits"], old_b[g]["labels"]) != (new_b[g]["bits"], new_b[g]["labels"]):
            diffs.append(f"generation {g}: the per-image correctness differs")
    return diffs


def rerun(table: str, label: str, seed: int, threads: int | None, work: Path) -> tuple[dict, list[str]]:
    """Train the row again in ``work``; (what was compared, the differences)."""
    from resprout.run import train

    specs = {s.name: s for s in load_all(REPRODUCTIONS)}
    if table not in specs:
        raise ConfigError(f"no reproduction named {table!r}; allowed: {', '.join(sorted(specs))}")
    spec = specs[table]
    old_rows, old_bits = recorded_run(table, label, seed)
    row = spec.row(label)
    if row is None or spec.uses_dependency(row):
        raise ConfigError(f"row {label!r} of {table} is trained from a dependency (or is one); re-running it "
                          f"would train its teacher again: choose a row without a teacher")
    grid, current, _ = current_fingerprints(spec, work)
    cell = next((c for c in grid.cells if (c.label, c.seed) == (label, seed)), None)
    if cell is None:
        raise ConfigError(f"{table} asks for no run of row {label!r} with seed {seed}")
    final = next(r for r in old_rows if r["final"] == 1)
    if final["fingerprint"] != current[(label, seed)]:
        raise ConfigError(f"the recorded run of {label!r} seed {seed} has another configuration than "
                          f"reproductions/{table}.toml asks for now (fingerprint {final['fingerprint']} recorded, "
                          f"{current[(label, seed)]} now): there is nothing to compare")
    t0 = time.time()
    out = work / "run"
    # the recorded run's precision (what precision=auto resolved to where it trained; the results' fingerprint
    # leaves it out): another one changes the arithmetic, and bf16 where the CPU only emulates it is refused
    precision = final["precision"] or "fp32"
    train(cell.config, out=out, store=work / "rerun.db", threads=threads or final["threads"] or 1, progress="plain",
          precision=precision)
    new_rows, new_bits = res.export_run(out, label, member=row.member)
    info = {"table": table, "label": label, "seed": seed, "recorded_commit": final["git_commit"],
            "generations": len(old_rows), "test_images": final["test_images"], "minutes": (time.time() - t0) / 60,
            "threads": threads or final["threads"] or 1, "precision": precision, "recorded_cpu": final.get("cpu")}
    return info, compare_runs(old_rows, old_bits, new_rows, new_bits)


def cpu_note(precision: str, recorded: str | None, here: str) -> str:
    """Why a differing low-precision row need not be the code's fault: which CPU trained it, if results/ knows."""
    if recorded is None:
        where = "results/ does not record the CPU that trained this run (it predates the column)"
    elif recorded == here:
        return (f"It was recorded on this CPU ({here}), so the difference comes from the code or the libraries, "
                f"not from the machine.")
    else:
        where = f"it was recorded on another CPU ({recorded}; this one: {here})"
    return (f"In {precision} another CPU's kernels can change the last bits, and {where}: train the row with the "
            f"recorded commit on this machine (a git worktree of it) before blaming the code.")


def commit_of_tree() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=8", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    from resprout.hardware import cpu_name

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", help="a reproduction's name (a file stem under reproductions/)")
    ap.add_argument("label", help="the row's label, as in the file")
    ap.add_argument("seed", type=int)
    ap.add_argument("--threads", type=int, help="torch threads (default: the recorded run's)")
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    ns = ap.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="resprout-rerun-") as tmp:
            info, diffs = rerun(ns.table, ns.label, ns.seed, ns.threads, Path(tmp))
    except ResproutError as e:
        print(f"rerun: error: {e}", file=sys.stderr)
        return 2
    here = cpu_name()
    verdict = ("**bit-identical**: the same top-1 and the same images right and wrong at every generation"
               if not diffs else "**differs**: " + "; ".join(diffs))
    line = (f"`python -m benchmarks.rerun {ns.table} \"{ns.label}\" {ns.seed}` ({time.strftime('%Y-%m-%d')}): "
            f"row {ns.label!r}, seed {ns.seed}, of {ns.table}, recorded at commit {info['recorded_commit']}, "
            f"trained again at {commit_of_tree()} ({info['generations']} generation(s), {info['test_images']} test "
            f"images, {info['threads']} thread(s), {info['precision']}, {here}, {info['minutes']:.1f} min): "
            f"{verdict}.")
    if diffs and info["precision"] != "fp32":
        line += " " + cpu_note(info["precision"], info["recorded_cpu"], here)
    print(line)
    if not ns.no_write:
        write_section("rerun", ["## A recorded reproduction row, trained again", "", line])
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
