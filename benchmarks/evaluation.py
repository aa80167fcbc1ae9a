"""Evaluation's share of training, before and after issue 12. Writes the "evaluation" section of BENCHMARKS.md.

The workload of the issue: Fashion-MNIST with 100 training images per class (1,000 images, 16 steps of 64) and
its whole test split (10,000 images), ResNet-20 at 28x28, one thread.

1. Per epoch, interleaved (A B C, A B C, ...): one training epoch; the whole test split evaluated as before
   (under ``torch.no_grad``, batch 512); as now (``torch.inference_mode``, batch 512, the default); with
   ``--batch-1024`` also at batch 1024. Evaluation's share of an epoch that evaluates, ``eval / (train + eval)``,
   per repetition; and the throughput of an average epoch of a default 10-epoch run, evaluation included:
   training images / (train + eval x evaluations / epochs), before (every epoch evaluated) and now (the default
   cadence: every ``ceil(10,000 / 1,024) = 10`` epochs, i.e. once, at the last), from the same repetition.
2. With ``--run-reps N``: whole default runs (the trainer end to end, in memory), before and now, timed.

Run: ``python -m benchmarks.evaluation [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from benchmarks._spread import NOTE, fmt, fmt_pct, machine_note  # noqa: E402
from resprout.config import make_config  # noqa: E402
from resprout.data.loader import EvalLoader  # noqa: E402
from resprout.engine.evaluation import auto_eval_every, evaluate  # noqa: E402
from resprout.engine.task import ClassificationTask  # noqa: E402
from resprout.run import create_trainer  # noqa: E402

THREADS = 1
WORKLOAD = dict(data="fashion-mnist", per_class=100, model="resnet20", threads=THREADS, progress="none", seed=0)


def evaluate_before(model, loader, dist=None):
    """The evaluation before issue 12: the same loop under autograd's ``no_grad`` instead of inference mode."""
    with torch.no_grad():
        return evaluate.__wrapped__(model, loader, dist)


class TaskBefore(ClassificationTask):
    """The classification task with the evaluation before issue 12 (and no per-image correctness, as then)."""

    keeps_correct = False

    def evaluate(self, model, loader, dist=None, correct=None):
        return evaluate_before(model, loader, dist)


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def per_epoch(reps: int, big_batch: bool) -> dict[str, list[float]]:
    """Seconds of one training epoch and of three ways to evaluate the test split, ``reps`` interleaved times."""
    trainer = create_trainer(make_config(**WORKLOAD, epochs=1), run_dir=None, run_id=None, store_path=None)
    trainer.start_steps()
    model, test = trainer.members["model"].model, trainer.eval_loaders["test"]
    big = EvalLoader(test.images, test.labels, batch_size=1024, normalizer=test.normalize, device=test.device)
    out: dict[str, list[float]] = {"train": [], "before": [], "now": []}
    if big_batch:
        out["now_1024"] = []

    def train_epoch():  # the run's batches and steps (Trainer.train_step), timed as the trainer times an epoch
        steps = trainer.train_loader.steps(0, 0)
        t0 = time.perf_counter()
        for step in range(steps):
            x, y = trainer.train_loader.batch(0, 0, step)
            trainer.train_step(x, y, step / steps, 1 / steps)
        return time.perf_counter() - t0

    train_epoch()  # warm-up
    evaluate(model, test)
    for r in range(reps):
        out["train"].append(train_epoch())
        out["before"].append(timed(evaluate_before, model, test))
        out["now"].append(timed(evaluate, model, test))
        if big_batch:
            out["now_1024"].append(timed(evaluate, model, big))
        print(f"rep {r + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in out.items()), flush=True)
    out["steps"], out["batch"] = [trainer.train_loader.steps(0, 0)], [trainer.train_loader.batch_size]
    out["train_images"] = [out["steps"][0] * out["batch"][0]]
    out["test_images"] = [test.total]
    return out


def whole_run(before: bool) -> dict[str, float]:
    """Train and evaluation seconds of a whole default run (10 epochs), before or after issue 12."""
    keys = dict(WORKLOAD, **({"eval_every": 1} if before else {}))
    trainer = create_trainer(make_config(**keys), run_dir=None, run_id=None, store_path=None)
    if before:
        trainer.task = TaskBefore()
    train_s, eval_s = [], []
    finish = trainer._finish_epoch

    def timed_finish():
        train_s.append(trainer._epoch_time)
        finish()
        eval_s.append(trainer._eval_time if trainer.last_eval else None)  # None: the epoch did not evaluate

    trainer._finish_epoch = timed_finish
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    images = sum(trainer.train_loader.steps(0, e) for e in range(trainer.config.epochs)) * \
        trainer.train_loader.batch_size
    return {"train": sum(train_s), "eval": sum(s for s in eval_s if s is not None), "wall": wall,
            "img_s": images / wall, "evaluations": sum(1 for s in eval_s if s is not None),
            "epochs": trainer.config.epochs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions of the per-epoch measurements")
    ap.add_argument("--run-reps", type=int, default=0, help="interleaved repetitions of whole default runs")
    ap.add_argument("--batch-1024", action="store_true", help="also evaluate at batch 1024")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    reps, run_reps = (2, 0) if args.quick else (args.reps, args.run_reps)
    t_start = time.perf_counter()
    ep = per_epoch(reps, args.batch_1024)
    runs: dict[str, list[dict]] = {"before": [], "now": []}
    for r in range(run_reps):  # interleaved, alternating which goes first
        for which in (("before", "now") if r % 2 == 0 else ("now", "before")):
            runs[which].append(whole_run(which == "before"))
            x = runs[which][-1]
            print(f"run {r + 1}/{run_reps} {which}: train {x['train']:.1f}s, eval {x['eval']:.1f}s "
                  f"({x['evaluations']} evaluations), wall {x['wall']:.1f}s, {x['img_s']:.0f} img/s", flush=True)
    minutes = (time.perf_counter() - t_start) / 60

    train_n, test_n = ep["train_images"][0], ep["test_images"][0]
    variants = [k for k in ("before", "now", "now_1024") if k in ep]
    share = {k: [e / (t + e) for t, e in zip(ep["train"], ep[k])] for k in variants}
    speed = [b / n for b, n in zip(ep["before"], ep["now"])]
    med = {k: statistics.median(v) for k, v in ep.items()}
    every = auto_eval_every(test_n, train_n)
    epochs = make_config().epochs
    n_now = sum(1 for e in range(1, epochs + 1) if e % every == 0 or e == epochs)
    # an average epoch of a default run, from the parts measured in the same repetition
    epoch_img_s = {"before": [train_n / (t + b) for t, b in zip(ep["train"], ep["before"])],
                   "now": [train_n / (t + n * n_now / epochs) for t, n in zip(ep["train"], ep["now"])]}
    epoch_share = {"before": share["before"],
                   "now": [n * n_now / epochs / (t + n * n_now / epochs) for t, n in zip(ep["train"], ep["now"])]}
    gain = [n / b for b, n in zip(epoch_img_s["before"], epoch_img_s["now"])]
    labels = {"before": "before: `no_grad`, batch 512", "now": "now: `inference_mode`, batch 512 (default)",
              "now_1024": "now, batch 1024"}
    lines = [
        "## Evaluation",
        "",
        f"Written by `python -m benchmarks.evaluation` (torch {torch.__version__}, {THREADS} thread, "
        f"{time.strftime('%Y-%m-%d')}, {minutes:.0f} min, {machine_note()}: absolute seconds depend on the load, "
        f"compare the shares). Fashion-MNIST, 100 training images per class ({train_n:,} images per epoch, "
        f"{ep['steps'][0]} steps of {ep['batch'][0]}), evaluated on the whole test split ({test_n:,} images); ResNet-20 at 28x28, NCHW. "
        f"{reps} interleaved repetitions. " + NOTE,
        "",
        "### One epoch that evaluates",
        "",
        "| evaluation | train s | eval s | eval share of the epoch |",
        "|---|---|---|---|",
    ]
    lines += [f"| {labels[k]} | {med['train']:.2f} | {med[k]:.2f} | {fmt_pct(share[k])} |" for k in variants]
    lines += [
        "",
        f"Evaluation before / now, same repetition: {fmt(speed, suffix='x')}. The forward passes are the same "
        "work: what bounds evaluation's share is how often it runs.",
        "",
        f"### An average epoch of a default run ({epochs} epochs), evaluation included",
        "",
        f"The default cadence evaluates every ceil(evaluated images / training images per epoch) = "
        f"ceil({test_n:,} / {train_n:,}) = {every} epochs and always at the last epoch of a generation: "
        f"{n_now} evaluation(s) in {epochs} epochs, where the old default (`eval_every=1`) made {epochs}. "
        "`eval_every=N` still sets it. Computed per repetition from the epoch's measured parts: "
        "training images / (train s + eval s x evaluations / epochs).",
        "",
        "| run | evaluations | eval share | training img/s, evaluation included |",
        "|---|---|---|---|",
        f"| before: every epoch, `no_grad` | {epochs} | {fmt_pct(epoch_share['before'])} | "
        f"{statistics.median(epoch_img_s['before']):.0f} |",
        f"| now: default cadence, `inference_mode` | {n_now} | {fmt_pct(epoch_share['now'])} | "
        f"{statistics.median(epoch_img_s['now']):.0f} |",
        "",
        f"Throughput now / before: {fmt(gain, suffix='x')}.",
        "",
    ]
    if run_reps:
        run_share = {k: [x["eval"] / (x["train"] + x["eval"]) for x in v] for k, v in runs.items()}
        run_gain = [n["img_s"] / b["img_s"] for b, n in zip(runs["before"], runs["now"])]
        lines += [f"Whole default runs, the trainer end to end ({run_reps} interleaved repetitions):", "",
                  "| run | train s | eval s | eval share of the run | img/s of wall time |", "|---|---|---|---|---|"]
        for k in ("before", "now"):
            v = runs[k]
            lines.append(f"| {k} ({v[0]['evaluations']} evaluations) | "
                         f"{statistics.median(x['train'] for x in v):.1f} | "
                         f"{statistics.median(x['eval'] for x in v):.1f} | {fmt_pct(run_share[k])} | "
                         f"{statistics.median(x['img_s'] for x in v):.0f} |")
        lines += ["", f"Whole-run throughput now / before: {fmt(run_gain, suffix='x')}.", ""]
    write_section("evaluation", lines, Path(args.out))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
