"""Start-up: where the seconds before the first training step go, and what the digits demo spends outside training.

Three measurements, each over interleaved repetitions (min / median / max):

1. ``resprout --help`` and ``resprout runs``: whole-process wall time (the CLI must answer in under a second).
2. The digits demo (``resprout train data=digits model=cnn epochs=3 seed=0 threads=1``, the README's first command:
   the CLI's ``main()`` with that command line) run by a driver process that timestamps the phases: interpreter start -> imports -> first training step ->
   training (sum of the epochs' training steps) -> evaluation (the whole 359-image test split after each epoch) ->
   exit. The overhead outside training is wall time minus the training steps' time, reported as a ratio to it.
3. Import costs of the heavy modules a run could pull in (``python -X importtime``, one fresh process per
   module, after ``import torch`` where they need it), to show what the deferrals save.

Run: ``python -m benchmarks.startup [--reps N]`` (threads=1; writes the ``startup`` section of BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._report import ROOT, write_section

PY = sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

# The demo in a driver process: a timing method records the phases inside the trainer.
DRIVER = r"""
import json, sys, time
t_script = time.time()
import torch
t_torch = time.time()
import resprout.run
from resprout.engine.method import Method
from resprout.methods import register_method
t_import = time.time()
marks = {"epoch_start": [], "epoch_end": [], "after_evaluate": [], "first_step": None, "fit_end": None}

class Timer(Method):
    name = "bench_timer"
    def on_epoch_start(self, trainer): marks["epoch_start"].append(time.time())
    def on_batch_start(self, trainer):
        if marks["first_step"] is None: marks["first_step"] = time.time()
    def on_epoch_end(self, trainer): marks["epoch_end"].append(time.time())
    def on_after_evaluate(self, trainer): marks["after_evaluate"].append(time.time())
    def on_fit_end(self, trainer): marks["fit_end"] = time.time()

register_method(Timer)
from resprout.cli import main
out = sys.argv[1]
sys.argv = ["resprout", "train", "data=digits", "model=cnn", "epochs=3", "seed=0", "threads=1",
            "method=ce+bench_timer", "--out", out, "--quiet"]
code = main()  # the command line itself, as `resprout train ...` runs it (argv from sys.argv)
print(json.dumps({"script": t_script, "torch": t_torch, "import": t_import, **marks,
                  "dynamo": "torch._dynamo" in sys.modules, "sklearn": "sklearn" in sys.modules,
                  "matplotlib": "matplotlib" in sys.modules, "end": time.time()}))
sys.exit(code)
"""


def spread(values: list[float], digits: int = 2) -> str:
    lo, med, hi = min(values), statistics.median(values), max(values)
    return f"{med:.{digits}f} ({lo:.{digits}f} - {hi:.{digits}f})"


def wall(cmd: list[str], cwd: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child): CPU time is what a loaded machine inflates least."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=ENV, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def demo(tmp: Path, rep: int) -> dict:
    out = tmp / f"demo-{rep}"
    t0 = time.time()
    proc = subprocess.run([PY, "-c", DRIVER, str(out)], env={**ENV, "RESPROUT_STORE": str(tmp / "runs.db")},
                          cwd=tmp, check=True, capture_output=True, text=True)
    t_exit = time.time()
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    train = sum(e - s for s, e in zip(m["epoch_start"], m["epoch_end"]))
    evals = sum(a - e for e, a in zip(m["epoch_end"], m["after_evaluate"]))
    total = t_exit - t0
    return {"total": total, "interpreter": m["script"] - t0, "torch": m["torch"] - m["script"],
            "resprout": m["import"] - m["torch"], "to_first_step": m["first_step"] - t0,
            "setup": m["first_step"] - m["import"], "train": train, "eval": evals,
            "after_fit": t_exit - m["fit_end"], "overhead_ratio": (total - train) / train,
            "outside_train_eval_ratio": (total - train - evals) / train,
            "dynamo": m["dynamo"], "sklearn": m["sklearn"], "matplotlib": m["matplotlib"]}


IMPORTS = [("torch", "import torch"), ("torch._dynamo (after torch)", "import torch; import torch._dynamo"),
           ("sklearn.datasets", "import sklearn.datasets"), ("matplotlib.pyplot", "import matplotlib.pyplot"),
           ("resprout.cli", "import resprout.cli"), ("resprout.run", "import resprout.run")]


def import_seconds(stmt: str, module: str) -> float:
    """Cumulative import time of ``module`` (the last statement's) from ``-X importtime``, in seconds."""
    proc = subprocess.run([PY, "-X", "importtime", "-c", stmt], env=ENV, capture_output=True, text=True, check=True)
    found = float("nan")
    for line in proc.stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] == module:
            found = int(parts[1]) / 1e6
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env_store = {"RESPROUT_STORE": str(tmp / "runs.db")}
        ENV.update(env_store)
        helps, runs, demos, loads = [], [], [], [os.getloadavg()[0]]
        imports: dict[str, list[float]] = {name: [] for name, _ in IMPORTS}
        for rep in range(ns.reps):  # interleaved: every repetition measures everything once
            helps.append(wall([PY, "-m", "resprout", "--help"], d))
            runs.append(wall([PY, "-m", "resprout", "runs"], d))
            demos.append(demo(tmp, rep))
            for name, stmt in IMPORTS:
                imports[name].append(import_seconds(stmt, stmt.split()[-1]))
            loads.append(os.getloadavg()[0])
            print(f"rep {rep + 1}/{ns.reps}: help {helps[-1][0]:.2f}s runs {runs[-1][0]:.2f}s demo "
                  f"{demos[-1]['total']:.2f}s (train {demos[-1]['train']:.2f}s)", flush=True)
    col = lambda k: [r[k] for r in demos]  # noqa: E731
    lines = [
        f"Start-up, `python -m benchmarks.startup --reps {ns.reps}`: threads=1, median (min - max) over {ns.reps} "
        f"interleaved repetitions, wall seconds, {os.cpu_count()} cores shared with other work (1-minute load average "
        f"{min(loads):.1f} - {max(loads):.1f} during the measurement: on an idle machine every number is smaller; "
        f"the ratios and the import shares are what carries over). The demo is `resprout train data=digits "
        f"model=cnn epochs=3 seed=0 threads=1` (1437 "
        f"training images, evaluated on the whole 359-image test split every epoch).",
        "",
        "| command | wall seconds | CPU seconds |",
        "|---|---|---|",
        f"| `resprout --help` | {spread([w for w, _ in helps])} | {spread([c for _, c in helps])} |",
        f"| `resprout runs` | {spread([w for w, _ in runs])} | {spread([c for _, c in runs])} |",
        "",
        "| digits demo phase | seconds |",
        "|---|---|",
        f"| interpreter start | {spread(col('interpreter'))} |",
        f"| import torch | {spread(col('torch'))} |",
        f"| import resprout.run (after torch) | {spread(col('resprout'))} |",
        f"| data, model, optimizer, store until the first step | {spread(col('setup'))} |",
        f"| **process start to the first training step** | {spread(col('to_first_step'))} |",
        f"| training steps (3 epochs) | {spread(col('train'))} |",
        f"| evaluation (3 x 359 images) | {spread(col('eval'))} |",
        f"| after training until exit (the interpreter's teardown, cut by a `gc.freeze()`) | "
        f"{spread(col('after_fit'))} |",
        f"| whole process | {spread(col('total'))} |",
        f"| **overhead outside training / training time** | {spread(col('overhead_ratio'))} |",
        f"| outside training and evaluation / training time | {spread(col('outside_train_eval_ratio'))} |",
        "",
        f"Loaded by the demo: torch._dynamo {demos[0]['dynamo']} (torch's own `SGD` would import it at its "
        f"first use; resprout's optimizers step exactly like it without the import, `resprout.lazy_dynamo`), "
        f"scikit-learn {demos[0]['sklearn']} (digits is read from the CSV file scikit-learn ships, without "
        f"importing it), matplotlib {demos[0]['matplotlib']} (only `resprout report` plots).",
        "",
        "| import (one fresh process each, `-X importtime`, cumulative) | seconds |",
        "|---|---|",
        *[f"| {name} | {spread(v)} |" for name, v in imports.items()],
    ]
    write_section("startup", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
