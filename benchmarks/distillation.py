"""KTAN's Table I on real small data with a teacher clearly stronger than the student, with Born-Again networks
and deep mutual learning. Writes the "distillation" section of BENCHMARKS.md.

``python -m benchmarks.distillation`` (about 40 minutes on one idle core; ``--quick`` for a 1-seed smoke run).

Fashion-MNIST with 100 training images per class, evaluated on a fixed 100 test images per class. A ResNet-20
teacher (width 0.5, 68k parameters) is trained once; then, for each of 3 seeds, a small CNN student (width 0.25,
4k parameters) is trained with every method for the same number of epochs (30) at the run defaults (batch 64, SGD
lr 0.1, cosine), so the teacher beats the plain student by several points:

* student (CE), KD, FitNet, AT, DLN, KTAN, KD+KTAN (the rows of KTAN's Table I) at resprout's defaults, and the
  settings they replaced: FitNet in one stage, AT in KTAN's Table I setting, KTAN with the paper's minimax term;
  Born-Again (2 generations), deep mutual learning (2 peers; each peer and their ensemble);
* KTAN in the paper's protocol: the seed's plain student run, then KTAN from it at the adversarial rate 1e-2;
* the equal-compute baseline: the student trained with CE for as many epochs in all as Born-Again, mutual
  learning and pre-trained KTAN used (2 x epochs), with one schedule.

Accuracy is the test top-1, mean +- std over seeds, at the last epoch and at the best epoch (the best is chosen
on the test split itself, as there is no validation split: an optimistic number). The cost of a method is the
training time of an epoch (steps only: no evaluation, no regressor pre-training) divided by that of the plain
student in the same seed and epoch; runs are interleaved (every method of seed 0, then of seed 1, ...), and the
ratio is reported as median (min-max) over seeds x epochs.

Every run is a normal resprout run under ``benchmarks/runs/distillation/``: running the script again reuses
finished runs. Methods that do not exist in this checkout are left out and named in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from benchmarks._spread import fmt  # noqa: E402
from resprout.analysis.tables import pm  # noqa: E402
from resprout.config import make_config  # noqa: E402
from resprout.engine.checkpoint import load_file  # noqa: E402
from resprout.engine.store import Store  # noqa: E402
from resprout.errors import ResproutError  # noqa: E402
from resprout.methods import get_method  # noqa: E402
from resprout.inputs import build_dataset  # noqa: E402
from resprout.run import train  # noqa: E402

RUNS = ROOT / "benchmarks" / "runs" / "distillation"
STORE = RUNS / "resprout.db"
SEEDS = (0, 1, 2)
THREADS = 1

DATASETS = {
    "fashion-mnist 100/class": dict(data="fashion-mnist", per_class=100, test_per_class=100, epochs=30,
                                    teacher_epochs=30),
}
COMMON = dict(progress="none", threads=THREADS)  # every other key at the run defaults (batch 64, lr 0.1, cosine)
STUDENT = dict(model="cnn", width=0.25)
TEACHER = dict(model="resnet20", width=0.5)

# label -> (method, extra keys, what one step computes beyond the student, needs the teacher)
ROWS = {
    "student": ("ce", {}, "-", False),
    "KD": ("kd", {}, "teacher forward", True),
    "FitNet (2 stages)": ("fitnet", {}, "teacher forward, regressor (stage 1)", True),
    "FitNet, 1 stage (fitnet.stages=1)": ("fitnet", {"method_options": {"fitnet": {"stages": 1}}},
                                          "teacher forward, regressor", True),
    "AT": ("at", {}, "teacher forward", True),
    "AT, KTAN Table I setting (at.form=ktan)": ("at", {"method_options": {"at": {"form": "ktan"}}},
                                                "teacher forward", True),
    "DLN": ("dln", {}, "teacher forward, regressor", True),
    "KTAN": ("ktan", {}, "teacher forward, regressor, discriminator (own step)", True),
    "KTAN, paper's minimax term (ktan.generator_loss=minimax)": (
        "ktan", {"method_options": {"ktan": {"generator_loss": "minimax"}}},
        "teacher forward, regressor, discriminator (own step)", True),
    "KD+KTAN": ("kd+ktan", {}, "teacher forward, regressor, discriminator (own step)", True),
    "Born-Again (2 gen.)": ("ban", {"generations": 2}, "gen. 2: forward of the frozen gen. 1", False),
    "mutual learning (2 peers)": ("dml", {"method_options": {"dml": {"peers": 2}}}, "a second peer (forward, "
                                  "backward, step)", False),
    "KTAN, paper's protocol (pre-trained student, adversarial lr 1e-2)": (
        "ktan", {}, "teacher forward, regressor, discriminator (own step)", True),
    "student, equal compute (2x epochs)": ("ce", {"epochs_factor": 2}, "-", False),
}
PRETRAINED = "KTAN, paper's protocol (pre-trained student, adversarial lr 1e-2)"


def slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")


def available(rows: dict) -> tuple[dict, list[str]]:
    """The rows whose methods import in this checkout, and the names of the missing ones."""
    ok, missing = {}, []
    for label, (method, *_rest) in rows.items():
        try:
            for name in method.split("+"):
                get_method(name)
        except (ResproutError, ImportError, AttributeError):
            missing.append(f"{label} ({method})")
            continue
        ok[label] = rows[label]
    return ok, missing


def run(keys: dict, out: Path, **extra) -> tuple[dict, float]:
    """Train (or continue) the run in ``out``; a finished run's results are read back from its checkpoint."""
    t = time.perf_counter()
    ck = out / "checkpoint.pt"
    if ck.exists():
        state = load_file(ck)
        if state["position"]["finished"]:
            return {**state["results"], "run_id": state["run_id"]}, time.perf_counter() - t
    result = train(**keys, out=out, store=STORE, **extra)
    return result, time.perf_counter() - t


def train_teacher(name: str, dkeys: dict) -> tuple[dict, Path]:
    keys = {**COMMON, **TEACHER, **data_keys(dkeys), "epochs": dkeys["teacher_epochs"], "seed": 0}
    out = RUNS / slug(name) / "teacher"
    result, secs = run(keys, out)
    print(f"{name} / teacher: final {100 * result['final']['model']['top1']:.2f} ({secs:.0f}s)", flush=True)
    return result, out


def data_keys(dkeys: dict) -> dict:
    return {k: v for k, v in dkeys.items() if k not in ("epochs", "teacher_epochs")}


def member_of(method: str) -> str:
    return "peer_1" if method == "dml" else "model"


def epoch_seconds(run_id: str, member: str) -> list[float]:
    """Training seconds of every epoch of a run, in order (generations one after the other)."""
    with Store(STORE) as s:
        return [v for m, _g, _e, split, metric, v in s.epoch_metrics(run_id)
                if m == member and split == "train" and metric == "seconds"]


def reproduce(seeds, scale_epochs: float, on_progress=None, deadline: float | None = None,
              limit: dict | None = None) -> dict:
    """Seeds outermost, then datasets, then methods: whatever is finished when the deadline (a ``time.time()``)
    passes is a complete set of rows for the seeds done (a method's cost is measured next to its student)."""
    rows, missing = available(ROWS)
    out: dict = {"missing": missing, "datasets": {}, "stopped": None}
    t0 = time.time()
    for i, seed in enumerate(seeds):
        for name, dkeys in DATASETS.items():
            if limit and i >= limit.get(name, len(seeds)):
                continue
            epochs = max(1, round(dkeys["epochs"] * scale_epochs))
            if name not in out["datasets"]:
                ds = build_dataset(make_config(**data_keys(dkeys)))
                teacher_result, _ = train_teacher(name, {**dkeys, "teacher_epochs": max(1, round(
                    dkeys["teacher_epochs"] * scale_epochs))})
                out["datasets"][name] = {"train": len(ds.train.labels), "test": len(ds.test.labels),
                                         "epochs": epochs, "teacher": teacher_result, "rows": {}, "seeds": []}
            info = out["datasets"][name]
            teacher_dir = RUNS / slug(name) / "teacher"
            done: dict = {}
            for label, (method, extra, _what, needs_teacher) in rows.items():
                if deadline is not None and time.time() > deadline:
                    out["stopped"] = f"stopped at the time limit before {name} / {label} / seed {seed}"
                    return out
                extra = dict(extra)
                factor = extra.pop("epochs_factor", 1)
                keys = {**COMMON, **STUDENT, **data_keys(dkeys), "method": method, "epochs": epochs * factor,
                        "seed": seed, **extra}
                kw = {"teacher": str(teacher_dir)} if needs_teacher else {}
                if label == PRETRAINED:
                    keys["method_options"] = {"ktan": {"student": str(RUNS / slug(name) / f"student-s{seed}"),
                                                       "adversarial_lr": 0.01}}
                result, secs = run(keys, RUNS / slug(name) / f"{slug(label)}-s{seed}", **kw)
                result["wall_seconds"] = secs
                result["epoch_seconds"] = epoch_seconds(result["run_id"], member_of(method))
                done[label] = result
                m = member_of(method)
                print(f"[{time.time() - t0:6.0f}s] {name} / {label} / seed {seed}: final "
                      f"{100 * result['final'][m]['top1']:.2f} ({secs:.0f}s)", flush=True)
            for label, result in done.items():  # only complete seeds enter the table
                info["rows"].setdefault(label, []).append(result)
            info["seeds"].append(seed)
            if on_progress is not None:  # a partial section after every seed of a dataset
                on_progress(out)
    return out


# -- the report ------------------------------------------------------------------------------------------------------
def cost_ratios(runs: list[dict], students: list[dict], per_epoch: int) -> list[float]:
    """Epoch training time over the plain student's, same seed and epoch index (a method with G generations or
    G x epochs is compared epoch by epoch with the student's epochs, cycling)."""
    ratios = []
    for r, s in zip(runs, students):
        base = s["epoch_seconds"]
        for i, sec in enumerate(r["epoch_seconds"]):
            ratios.append(sec / base[i % per_epoch])
    return ratios


def delta(values: list[float], reference: list[float]) -> str:
    """Mean +- std over seeds of the paired difference to the plain student (same seed), in points."""
    return pm([v - r for v, r in zip(values, reference)]) if len(values) == len(reference) else "-"


def table(name: str, info: dict) -> list[str]:
    rows = info["rows"]
    students = rows["student"]
    ref = [r["final"]["model"]["top1"] for r in students]
    e = info["epochs"]
    lines = [f"**{name}**: {info['train']} training images, test set {info['test']} images, {e} epochs per "
             f"student run, seeds {', '.join(map(str, info['seeds']))}.", "",
             "| method | last top-1 | best top-1 | last − student (paired) | epochs in all | step cost vs student "
             "| what a step adds |",
             "|---|---|---|---|---|---|---|"]
    t = info["teacher"]
    lines.append(f"| teacher (ResNet-20 w0.5, seed 0, 1 run) | {pm([t['final']['model']['top1']])} | "
                 f"{pm([t['best']['model']['top1']])} | | {DATASETS_EPOCHS[name]} | | |")
    for label, runs in rows.items():
        method = ROWS[label][0]
        m = member_of(method)
        last = [r["final"][m]["top1"] for r in runs]
        best = [r["best"][m]["top1"] for r in runs]
        total = {"ban": f"{2 * e} ({e} x 2 generations)", "dml": f"{e} per peer, 2 peers"}.get(method, e)
        if "equal" in label:
            total = 2 * e
        if label == PRETRAINED:
            total = f"{2 * e} ({e} CE pre-training + {e} KTAN)"
        cost = fmt(cost_ratios(runs, students, e), suffix="x") if label != "student" else "1 (reference)"
        if "equal" in label:
            cost = "1"
        shown = "mutual learning (2 peers): peer 1" if method == "dml" else label
        diff = delta(last, ref) if label != "student" else ""
        lines.append(f"| {shown} | {pm(last)} | {pm(best)} | {diff} | {total} | {cost} | {ROWS[label][2]} |")
        if method == "dml":
            peer2 = [r["final"]["peer_2"]["top1"] for r in runs]
            ens = [r["final"]["ensemble"]["top1"] for r in runs]
            lines.append(f"| mutual learning (2 peers): peer 2 | {pm(peer2)} | "
                         f"{pm([r['best']['peer_2']['top1'] for r in runs])} | {delta(peer2, ref)} | | | |")
            lines.append(f"| mutual learning (2 peers): ensemble (mean probability) | {pm(ens)} | | "
                         f"{delta(ens, ref)} | | | |")
        if method == "ban":
            g1 = [r["generations"][0]["model"]["test_top1"] for r in runs]
            lines.append(f"| Born-Again, generation 1 (the plain student again) | {pm(g1)} | | {delta(g1, ref)} | "
                         f"{e} | | |")
    return lines


DATASETS_EPOCHS = {}


def write(out: dict, seeds, minutes: float) -> list[str]:
    lines = ["## Distillation", "",
             f"Knowledge transfer on real small data with a teacher clearly stronger than the student: KTAN's Table "
             f"I rows plus Born-Again networks and deep mutual learning (`python -m benchmarks.distillation`, "
             f"{len(seeds)} seeds planned, threads={THREADS}, {minutes:.0f} min on this machine, load average "
             f"{os.getloadavg()[0]:.1f} on its {os.cpu_count()} cores at the end). Student: the small CNN at width "
             f"0.25 (4k parameters); teacher: ResNet-20 at width 0.5 (68k parameters), trained once. Run defaults "
             f"(batch 64, SGD lr 0.1, cosine) and every method at resprout's defaults: KD T=4 weight 0.9; FitNet in "
             f"two stages (a quarter of the steps on the hint, then Eq. (2) with lambda 4 to 1, tau 3); AT in the "
             f"authors' form, beta 1000; DLN/KTAN beta 0.5, alpha 0.6, KTAN's adversarial term capped at D = 1/2; "
             f"Born-Again T=1 weight 1; mutual learning weight 1, peers updated in turn. The rows marked with an "
             f"option show the setting a default replaced. Top-1 in %, mean ± std over seeds; 'best' is the best "
             f"epoch on the test split (no validation split: optimistic). Step cost: the training time of an epoch "
             f"over the plain student's, same seed and epoch, median (min–max) over seeds x epochs, runs "
             f"interleaved" + (" (the machine was shared, load above its core count: the cost ranges are wide)"
                               if os.getloadavg()[0] > (os.cpu_count() or 1) else "") +
             ". The equal-compute row (the student for 2 x epochs, one schedule) is the baseline of Born-Again, "
             "mutual learning and the paper's KTAN protocol, which train two networks' worth of epochs.", ""]
    if out.get("stopped"):
        lines += [f"Incomplete: {out['stopped']} (the rows below hold the seeds that finished).", ""]
    if out["missing"]:
        lines += [f"Not run (method missing in this checkout): {', '.join(out['missing'])}.", ""]
    for name, info in out["datasets"].items():
        if info["seeds"]:
            lines += table(name, info) + [""]
    return lines


def elapsed_minutes() -> float:
    """Minutes from the first run of the store to the last one's end (over every invocation of the script)."""
    with Store(STORE) as s:
        runs = s.runs()
    return (max(r.updated for r in runs) - min(r.created for r in runs)) / 60 if runs else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one seed, a fifth of the epochs (a smoke run)")
    p.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    p.add_argument("--only", choices=sorted(DATASETS), help="run one dataset only")
    p.add_argument("--minutes", type=float, default=None, help="start no new run after this many minutes")
    p.add_argument("--seeds", action="append", default=[], metavar="DATASET=N",
                   help="run only the first N seeds of DATASET (repeatable)")
    p.add_argument("--report-only", action="store_true", help="rewrite the section from the saved results.json")
    args = p.parse_args()
    if args.only:
        for name in list(DATASETS):
            if name != args.only:
                del DATASETS[name]
    seeds = SEEDS[:1] if args.quick else SEEDS
    scale = 0.2 if args.quick else 1.0
    global RUNS, STORE
    if args.quick:
        RUNS = RUNS.parent / "distillation-quick"
        STORE = RUNS / "resprout.db"
    for name, dkeys in DATASETS.items():
        DATASETS_EPOCHS[name] = max(1, round(dkeys["teacher_epochs"] * scale))
    t0 = time.time()

    def report(out: dict) -> list[str]:
        lines = write(out, seeds, elapsed_minutes())
        (RUNS / "results.json").write_text(json.dumps(out, indent=1, default=str))
        if not args.no_write and not args.quick:
            write_section("distillation", lines)
        return lines

    if args.report_only:
        saved = json.loads((RUNS / "results.json").read_text())
        lines = write(saved, seeds, elapsed_minutes())
        if not args.no_write:
            write_section("distillation", lines)
        print("\n".join(lines))
        return
    deadline = t0 + 60 * args.minutes if args.minutes else None
    limit = {k: int(v) for k, v in (x.rsplit("=", 1) for x in args.seeds)}
    out = reproduce(seeds, scale, on_progress=report, deadline=deadline, limit=limit)
    print("\n".join(report(out)))


if __name__ == "__main__":
    main()
