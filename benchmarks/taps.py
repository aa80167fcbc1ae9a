"""Feature-tap overhead on a training step. Writes its section of BENCHMARKS.md.

ResNet-20 on random 3x32x32 data, batch 64, SGD, one thread. Three copies of the same model train side by side:
no taps (a :class:`FeatureTaps` with nothing requested is attached, so no hook exists), one tap (``layer3``) and three
taps (``layer1``, ``layer2``, ``layer3``); each step also calls ``taps.clear()`` as the trainer does. The captured
tensors are not used in the loss: this measures the hooks, not extra loss terms. Repetitions are interleaved
(the order rotates every repetition); every figure is (step time with taps) / (step time without taps in the
same repetition), reported as the median with its min and max over repetitions.

Run: ``python -m benchmarks.taps [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from benchmarks._spread import NOTE, fmt, machine_note  # noqa: E402
from resprout.engine.taps import FeatureTaps  # noqa: E402
from resprout.models import build_model  # noqa: E402

VARIANTS = {"no taps": [], "1 tap": ["layer3"], "3 taps": ["layer1", "layer2", "layer3"]}


def make(paths: list[str], base: torch.nn.Module):
    model = copy.deepcopy(base).train()
    taps = FeatureTaps()
    for p in paths:
        taps.request("model", p)
    taps.attach("model", model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, taps, opt


def steps(model, taps, opt, x, y, n: int) -> float:
    """Seconds per training step over ``n`` steps."""
    t0 = time.perf_counter()
    for i in range(n):
        taps.clear()
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    reps, per = (3, 2) if args.quick else (15, 3)
    base = build_model("resnet20", in_channels=3, num_classes=10)
    x = torch.randn(per, 64, 3, 32, 32)
    y = torch.randint(0, 10, (per, 64))
    runs = {name: make(paths, base) for name, paths in VARIANTS.items()}
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in runs["no taps"][0].modules())
    for run in runs.values():  # warm-up
        steps(*run, x, y, 1)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    t_start = time.perf_counter()
    names = list(VARIANTS)
    for r in range(reps):
        for name in names[r % 3:] + names[:r % 3]:  # rotate the order so no variant always runs first
            times[name].append(steps(*runs[name], x, y, per))
        print(f"rep {r + 1}/{reps}: " + ", ".join(f"{n} {1e3 * t[-1]:.1f} ms" for n, t in times.items()), flush=True)
    for name, paths in VARIANTS.items():  # the taps did capture
        taps = runs[name][1]
        assert all(taps.calls("model", p) == 1 for p in paths)
    rows = []
    for name in VARIANTS:
        rows.append((name, 1e3 * statistics.median(times[name]),
                     [t / b for t, b in zip(times[name], times["no taps"])]))
    elapsed = time.perf_counter() - t_start
    base_t = sorted(times["no taps"])
    spread = base_t[3 * len(base_t) // 4] / base_t[len(base_t) // 4] - 1
    lines = ["## Feature taps", "",
             (f"Written by `python -m benchmarks.taps` (torch {torch.__version__}, {torch.get_num_threads()} thread, "
              f"{time.strftime('%Y-%m-%d')}, {reps} interleaved repetitions of {per} steps, medians, "
              f"{elapsed:.0f} s, {machine_note()}). ResNet-20, random 3x32x32 data, batch 64, SGD training step (forward, "
              "cross-entropy, backward, step, plus `taps.clear()`); captured features are not used in the loss. "
              + NOTE), "", f"No taps: {1e3 * statistics.median(times['no taps']):.1f} ms / step (median).", "",
             "| variant | ms / step | ratio to no taps, same repetition |", "|---|---|---|"]
    lines += [f"| {n} | {ms:.1f} | {fmt(r)} |" for n, ms, r in rows[1:]]
    lines += ["", (f"Noise: the no-tap step time itself varies by {100 * spread:.0f}% between its quartiles in this "
                   "run (shared machine), so a range that contains 1 means no measurable overhead. "
                   "No taps means a `FeatureTaps` was attached with nothing requested: no hook is registered. One tap "
                   "hooks `layer3`; three taps hook `layer1`, `layer2`, `layer3`; each adds a root pre-hook that resets "
                   "the member's captures at the start of its forward."), ""]
    write_section("taps", lines, Path(args.out))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
