"""Neural Rejuvenation reproduction and speed benchmarks (Qiao et al., CVPR 2019). Writes the "rejuvenation" section
of BENCHMARKS.md.

``python -m benchmarks.rejuvenation`` runs three parts in ``--jobs`` (2) processes, one thread each (about 26
minutes elapsed on a quiet 2-core machine); ``--part NAME`` runs one part, ``--part report`` only writes the section
from the saved parts, ``--epochs 1 --seeds 1`` is a one-minute smoke run that also writes it.

* ``digits`` (VGG-11-BN with the paper's CIFAR head, global average pooling then one FC layer (Sec. 4.4), width
  0.25, 6 epochs) and ``fashion`` (Fashion-MNIST, 100 training images per class, ResNet-20 at width 0.5, 20 epochs):
  the **Table 1 analog** at equal parameters: BL (also the equal-compute baseline: every run trains the same
  epochs, the sparsity phase included), BL-CA, NR (cross kept), NR-CR, NR-CR at equal real weights
  (``nr.count=real``), NR-CA, NR-CA-BR (with neural rescaling), NR-FS (the found architecture from scratch), NR-IP
  (no reallocation, cross connections kept as in NR: the same cost as NR and NR-CR, counted either way).
* ``digits`` and ``fashion-more``: the **Table 4 analog** (NR-CR with ``nr.target=0.5``, T_r = 0.25, against
  Network Slimming at the same cost) and the **Table 5 analog** (up to 3 rejuvenations, NR-CR).
* **Speed**: the monitor's time per epoch against the epoch's time, and one rejuvenation against one epoch, from the
  timed NR runs (min / median / max over runs).

Every NR run uses the library's defaults (lambda per epoch, the paper's ramp in the sparsity window, the window's
deadline; docs/rejuvenation.md), apart from the ablation's own switch. Every row reports the cost three ways: the
paper's count (conv and linear weights, NR-CR's zero cross blocks left out), the weights the tensors really hold,
and the multiply-adds the forward really runs (torch's FlopCounterMode), each also as a ratio to BL's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from benchmarks._spread import fmt  # noqa: E402
from resprout import methods  # noqa: E402
from resprout.analysis.tables import pm  # noqa: E402
from resprout.methods.rejuvenation import NeuralRejuvenation  # noqa: E402
from resprout.run import train  # noqa: E402

SEEDS = (0, 1, 2)
DIGITS = dict(data="digits", model="vgg11", model_options={"width": 0.25}, epochs=6)
FASHION = dict(data="fashion-mnist", per_class=100, test_per_class=100, model="resnet20", model_options={"width": 0.5},
               epochs=20, eval_every=20)
PARTS = ("digits", "fashion", "fashion-more")
TIMES: list[dict] = []


class TimedNR(NeuralRejuvenation):
    """NR with its checks, rejuvenations and epochs timed (outside the results, which must stay deterministic)."""

    name = "nr"

    def on_fit_start(self, trainer):
        self._t = {"check": [], "rejuvenate": [], "epochs": [], "check_in_epoch": 0.0, "rej_in_epoch": False}
        TIMES.append(self._t)
        super().on_fit_start(trainer)

    def on_epoch_start(self, trainer):
        self._t["epoch_t0"], self._t["check_in_epoch"], self._t["rej_in_epoch"] = time.perf_counter(), 0.0, False

    def on_epoch_end(self, trainer):
        self._t["epochs"].append((time.perf_counter() - self._t["epoch_t0"], self._t["check_in_epoch"],
                                  self._t["rej_in_epoch"]))

    def check(self, trainer, epoch, dt=None):
        t0, before = time.perf_counter(), self.count
        super().check(trainer, epoch, dt)
        dt = time.perf_counter() - t0
        if self.count == before:
            self._t["check"].append(dt)
            self._t["check_in_epoch"] += dt
        else:
            self._t["rej_in_epoch"] = True

    def rejuvenate(self, trainer, u, epoch, **kw):
        t0 = time.perf_counter()
        rec = super().rejuvenate(trainer, u, epoch, **kw)
        self._t["rejuvenate"].append(time.perf_counter() - t0)
        return rec


def run(base: dict, method: str, seed: int, opts: dict | None = None) -> dict:
    keys = dict(base, method=method, seed=seed, threads=1, progress="none")
    if opts:
        keys["method_options"] = opts
    t0 = time.perf_counter()
    res = train(**keys, save=False)
    res["seconds"] = time.perf_counter() - t0
    print(f"  {method} {opts or ''} seed {seed}: top1 {res['final']['model']['top1']:.4f} "
          f"({res['seconds']:.0f}s)", flush=True)
    return res


def counts_of(res: dict) -> dict:
    """The final network's paper count and real counts (:func:`resprout.methods.rejuvenation.model_counts`)."""
    return (res.get("slimming") or res["rejuvenation"])["counts"]["final"]


def mean_of(results: list[dict], key: str) -> float:
    return statistics.mean(counts_of(r)[key] for r in results)


def row(name: str, results: list[dict], base: list[dict]) -> str:
    last = [r["final"]["model"]["top1"] for r in results]
    best = [r["best"]["model"]["top1"] for r in results]
    counts = [r.get("rejuvenation", {}).get("count", 0) for r in results]
    firsts = [r["rejuvenation"]["rejuvenations"][0] for r in results
              if r.get("rejuvenation", {}).get("rejuvenations")]
    first = (f"{statistics.mean(f['utilization_before'] for f in firsts):.3f} at "
             f"{statistics.mean(f['epoch'] for f in firsts):.2f} "
             f"({', '.join(sorted({f['trigger'] for f in firsts}))})" if firsts else "-")
    cost = [f"{mean_of(results, k):,.0f} ({mean_of(results, k) / mean_of(base, b):.2f}x)"
            for k, b in (("paper_params", "paper_params"), ("weights", "weights"), ("macs", "macs"))]
    return (f"| {name} | {pm(last)} | {pm(best)} | {' | '.join(cost)} | {statistics.mean(counts):.1f} | "
            f"{first} |")


HEADER = ["| run | top-1 last (%) | top-1 best (%) | paper's params (x BL) | real weights (x BL) | real MACs (x BL) | "
          "rejuvenations | r at the first, epoch (trigger) |",
          "|---|---|---|---|---|---|---|---|"]


def unequal(results: dict, names, base: str = "BL") -> list[str]:
    """The rows of an equal-cost table whose real weights are not within 1% of the baseline's."""
    ref = mean_of(results[base], "weights")
    return [n for n in names if n in results and abs(mean_of(results[n], "weights") / ref - 1) > 0.01]


RESULTS = ROOT / "benchmarks" / "runs"


def table1() -> dict:
    """Table 1 analog: the baseline and every ablation at equal parameters (target 1.0)."""
    return {
        "BL": ("nr", {"nr": {"mode": "bl", "scheme": "nr"}}),
        "BL-CA": ("nr", {"nr": {"mode": "bl", "scheme": "ca"}}),
        "NR (cross kept)": ("nr", {"nr": {"scheme": "nr"}}),
        "NR-CR": ("nr", {"nr": {"scheme": "cr"}}),
        "NR-CR, equal real weights": ("nr", {"nr": {"scheme": "cr", "count": "real"}}),
        "NR-CA": ("nr", {"nr": {"scheme": "ca"}}),
        "NR-CA-BR": ("nr", {"nr": {"scheme": "ca", "rescale": True}}),
        "NR-FS": ("nr", {"nr": {"mode": "fs"}}),
        "NR-IP": ("nr", {"nr": {"scheme": "nr", "mode": "ip"}}),
    }


def table4() -> dict:
    """Table 4 analog: compression to half the cost (T_r = 0.25, as the paper's CIFAR runs) against slimming."""
    return {
        "NR-CR, target 0.5": ("nr", {"nr": {"scheme": "cr", "target": 0.5, "threshold": 0.25}}),
        "NR-CR, target 0.5 in real weights": ("nr", {"nr": {"scheme": "cr", "target": 0.5, "threshold": 0.25,
                                                             "count": "real"}}),
        "Network Slimming, 0.5": ("slimming", {"slimming": {"target": 0.5}}),
    }


def table5() -> dict:
    return {"NR-CR, up to 3": ("nr", {"nr": {"scheme": "cr", "rejuvenations": 3}})}


def configs(part: str) -> tuple[dict, dict]:
    if part == "digits":
        return DIGITS, {**table1(), **table4(), **table5()}
    if part == "fashion":
        return FASHION, table1()
    return FASHION, {**table4(), **table5()}


def run_part(part: str, seeds) -> None:
    base, todo = configs(part)
    t0, out = time.perf_counter(), {}
    print(f"{part}: interleaved by seed", flush=True)
    for seed in seeds:
        for name, (method, opts) in todo.items():
            out.setdefault(name, []).append(run(base, method, seed, opts))
    (RESULTS / f"rejuvenation-{part}.json").write_text(json.dumps(
        {"results": out, "times": TIMES, "seconds": time.perf_counter() - t0, "seeds": list(seeds),
         "epochs": base["epochs"]}, default=str))
    TIMES.clear()


def run_parallel(parts, args) -> float:
    """Every part in its own process, ``--jobs`` at a time (one thread each); returns the elapsed seconds."""
    t0, waiting, running = time.perf_counter(), list(parts), []
    while waiting or running:
        while waiting and len(running) < args.jobs:
            cmd = [sys.executable, "-m", "benchmarks.rejuvenation", "--part", waiting.pop(0), "--seeds",
                   str(args.seeds)] + (["--epochs", str(args.epochs)] if args.epochs else [])
            running.append(subprocess.Popen(cmd, cwd=ROOT))
        time.sleep(1)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            if p.returncode:
                raise SystemExit(f"benchmark part failed: {' '.join(p.args)}")
    return time.perf_counter() - t0


def setup_line(epochs: int, what: str) -> str:
    return (f"{what}, {epochs} epochs, batch 64, SGD momentum 0.9 cosine from lr 0.1 (held while the sparsity window "
            f"is open and restarted when it closes: `nr.lr=hold`), 1 thread, mean ± std over seeds. NR runs at the "
            f"library's defaults: lambda per epoch (the paper's Delta lambda, 5e-5 at 5,005 iterations per epoch, is "
            f"0.25 per epoch, applied over the run's iterations), one epoch of the paper's ramp per epoch, a check "
            f"every quarter epoch, proximal L1, T_r = 0.5 (0.25 for compression), a sparsity window of half the "
            f"epochs that ends in a rebuild if T_r was not reached (trigger `deadline`), one rejuvenation unless "
            f"said.")


def tables_of(results: dict, names, title: str, baseline: str | None = None, equal: bool = False) -> list[str]:
    lines = ["", title, "", *HEADER]
    base = results.get("BL") or next(iter(results.values()))
    if baseline:
        lines.append(row(f"{baseline} (the baseline)", results[baseline], base))
    lines += [row(n, results[n], base) for n in names if n in results]
    if equal:
        off = unequal(results, names)
        lines += ["", f"Equal in the paper's count, not in real weights (more than 1% off BL's): {', '.join(off)}."
                  if off else "Every row is within 1% of BL's real weights."]
    return lines


def report() -> None:
    saved = {part: json.loads(f.read_text()) for part in PARTS
             if (f := RESULTS / f"rejuvenation-{part}.json").is_file()}
    if not saved:
        raise SystemExit("no benchmark results under benchmarks/runs/: run the parts first")
    elapsed = RESULTS / "rejuvenation-elapsed.json"
    total = sum(v["seconds"] for v in saved.values())
    lines = [f"Total time: {total / 60:.1f} min of runs summed over the parts ({', '.join(saved)})" +
             (f", {json.loads(elapsed.read_text())['seconds'] / 60:.1f} min elapsed with the parts in "
              f"{json.loads(elapsed.read_text())['jobs']} processes." if elapsed.is_file() else ".")]
    if "digits" in saved:
        out = saved["digits"]["results"]
        lines += ["", "### Digits, VGG-11", "", setup_line(saved["digits"]["epochs"],
                  f"Digits (1,437 train / 359 test images, 8x8), VGG-11-BN (GAP + one FC, Sec. 4.4) at width 0.25, "
                  f"seeds {saved['digits']['seeds']}")]
        lines += tables_of(out, table1(), "**Table 1 analog (equal parameters, target 1.0)**", equal=True)
        lines += tables_of(out, table4(), "**Table 4 analog (compression to half the cost)**", "BL")
        lines += tables_of(out, ["NR-CR", *table5()], "**Table 5 analog (several rejuvenations)**", "BL")
    fashion = {**saved.get("fashion", {}).get("results", {}), **saved.get("fashion-more", {}).get("results", {})}
    if fashion:
        part = saved.get("fashion") or saved["fashion-more"]
        seeds = part["seeds"]
        lines += ["", "### Fashion-MNIST, ResNet-20", "", setup_line(part["epochs"],
                  f"Fashion-MNIST (100 train images per class; 100 test images per class, 1,000 in all, evaluated "
                  f"at the end), ResNet-20 at width 0.5, main stream excluded from the monitor, seeds {seeds}")]
        lines += tables_of(fashion, table1(), "**Table 1 analog (equal parameters, target 1.0)**", equal=True)
        base = "BL" if "BL" in fashion else None
        lines += tables_of(fashion, table4(), "**Table 4 analog (compression to half the cost)**", base)
        lines += tables_of(fashion, ["NR-CR", *table5()], "**Table 5 analog (several rejuvenations)**", base)
    lines += ["", "(paper's params: conv and linear weights as the paper counts them, NR-CR's zero cross blocks left "
                  "out; real weights: what the conv and linear tensors hold; real MACs: the conv and linear "
                  "multiply-adds of one forward, by torch's FlopCounterMode, where NR-CA's gate computes its cross "
                  "blocks a second time; x BL: over BL's, mean over seeds. Rejuvenations: how many happened, mean "
                  "over seeds; r at the first: the utilization then, its epoch, and whether T_r or the window's "
                  "deadline triggered it)"]
    times = [t for v in saved.values() for t in v["times"]]
    checks = [sum(c for _, c, rej in t["epochs"] if not rej) / sum(e for e, _, rej in t["epochs"] if not rej)
              for t in times if t["check"] and any(not rej for _, _, rej in t["epochs"])]
    rejs = [r / statistics.median(e for e, _, _ in t["epochs"]) for t in times for r in t["rejuvenate"]]

    def spread_of(values):
        return fmt(values, scale=100, suffix="%") if values else "no measurement"

    lines += ["", "**Speed** (over every timed NR run above; min–max in brackets):", "",
              f"- monitor (all utilization checks of an epoch, 4 per epoch) / epoch time: "
              f"{spread_of(checks)} over {len(checks)} runs (target <= 2%)",
              f"- one rejuvenation (solve, resize surgery, re-init, optimizer carry-over) / median epoch time: "
              f"{spread_of(rejs)} over {len(rejs)} rejuvenations (target <= 100%)"]
    write_section("rejuvenation", lines)
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=len(SEEDS))
    p.add_argument("--part", choices=("all", *PARTS, "report"), default="all",
                   help="run one part (results kept under benchmarks/runs/), all of them, or only write the section")
    p.add_argument("--jobs", type=int, default=2, help="--part all: parts run side by side in this many processes")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs (a quick smoke run)")
    args = p.parse_args()
    if args.epochs:
        DIGITS["epochs"] = FASHION["epochs"] = FASHION["eval_every"] = args.epochs
    methods.register_method(TimedNR, replace=True)  # every run of this script (and its parts) times NR
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.part == "all":
        seconds = run_parallel(PARTS, args)
        (RESULTS / "rejuvenation-elapsed.json").write_text(json.dumps({"seconds": seconds, "jobs": args.jobs}))
    elif args.part != "report":
        run_part(args.part, SEEDS[: args.seeds])
        return
    report()


if __name__ == "__main__":
    main()
