"""Engine benchmarks: the cost of update steps. Writes the "engine" section of BENCHMARKS.md.

Three variants of the same training run, interleaved (A B C A B C ...); each ratio is
computed per repetition and reported as median (min-max):

1. a minimal hand-written PyTorch loop (benchmarks.foundation.hand_loop);
2. the trainer with its default step (no method declares update steps): target >= 0.95 of the hand loop;
3. the trainer with one explicitly declared update step over the same member and terms (the path KTAN's
   discriminator steps take: backward with ``inputs=``, per-step term bookkeeping): reported as its ratio to 2.

Feature taps are measured by benchmarks/taps.py. Run: ``python -m benchmarks.engine [--quick]``.
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
from benchmarks._spread import NOTE, fmt, machine_note  # noqa: E402
from benchmarks.foundation import WORKLOADS, hand_loop, trainer_run  # noqa: E402
from resprout.engine.members import UpdateStep  # noqa: E402
from resprout.engine.method import Method  # noqa: E402
from resprout.methods import register_method  # noqa: E402


class OneExplicitStep(Method):
    """Declares the default rule as an explicit update step (same member, same CE term)."""

    name = "bench_one_step"

    def update_steps(self, trainer):
        return [UpdateStep("all", ["model"])]


register_method(OneExplicitStep)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    args = ap.parse_args()
    threads = 1
    torch.set_num_threads(threads)
    reps = 2 if args.quick else args.reps
    rows = []
    for name, keys in WORKLOADS.items():
        keys = dict(keys, augment="none", threads=threads)
        epochs = 3 if name == "cnn-digits" else 1
        hand_loop(keys, 1)  # warm up allocator and kernels
        hand, default, explicit = [], [], []
        for _ in range(reps):
            hand.append(hand_loop(keys, epochs))
            default.append(trainer_run(keys, epochs, None)["img_s"])
            explicit.append(trainer_run({**keys, "method": "ce+bench_one_step"}, epochs, None)["img_s"])
        h, d, e = (statistics.median(v) for v in (hand, default, explicit))
        # ratios per repetition (the three runs of a repetition are back to back), then their spread
        rows.append(f"| {name} | {h:.0f} | {d:.0f} | {fmt([b / a for a, b in zip(hand, default)])} | {e:.0f} | "
                    f"{fmt([c / b for b, c in zip(default, explicit)])} |")
        print(rows[-1], flush=True)
    write_section("engine", [
        "## Engine: update steps",
        "",
        f"`python -m benchmarks.engine` (torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, {machine_note()}): {reps} "
        f"interleaved repetitions, {threads} thread, training images per second (training steps only, medians). "
        + NOTE,
        "",
        "| workload | hand loop | trainer, default step | trainer / hand | trainer, one declared step | "
        "declared / default |",
        "|---|---|---|---|---|---|",
        *rows,
    ])


if __name__ == "__main__":
    main()
