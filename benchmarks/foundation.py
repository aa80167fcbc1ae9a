"""Foundation benchmarks: trainer overhead, data-loading share, checkpoint cost. Writes BENCHMARKS.md.

Every figure is a ratio against a baseline measured in the same run, interleaved (A B A B ...) and reported as
the median with its min and max over the repetitions (benchmarks._spread), because these machines are noisy:

1. Trainer throughput / a minimal hand-written PyTorch loop (same model, data, batch size, optimizer, schedule),
   on training steps only. Targets: >= 0.95.
2. Data loading and augmentation (gather, crop, flip, normalize) as a share of a training step. Target: <= 5%.
3. Checkpointing at the default frequency (every epoch) as a share of epoch time: the time the training thread
   is blocked (snapshot), and the wall-clock difference of whole runs with and without checkpoints. Target: <= 2%.

Run: ``python -m benchmarks.foundation [--quick]``; the measurements are kept in
``benchmarks/results/foundation.json``, from which ``--from-results`` writes the section again without measuring.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from benchmarks._spread import NOTE, fmt, fmt_pct  # noqa: E402
from resprout.config import make_config  # noqa: E402
from resprout.data import channel_stats  # noqa: E402
from resprout.models import build_model  # noqa: E402
from resprout.inputs import build_dataset  # noqa: E402
from resprout.run import create_trainer  # noqa: E402
from resprout.seeding import seed_everything  # noqa: E402

WORKLOADS = {
    "cnn-digits": dict(data="digits", model="cnn", batch_size=64),
    "resnet20-fmnist32": dict(data="fashion-mnist", model="resnet20", image_size=32, channels=3, per_class=256,
                              batch_size=128),
}


def hand_loop(keys: dict, epochs: int) -> float:
    """Training images per second of the plainest correct loop: tensors in memory, randperm, SGD, cosine."""
    cfg = make_config(**keys)
    ds = build_dataset(cfg)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, in_channels=ds.input_shape[0], num_classes=ds.num_classes, **cfg.model_kwargs())
    mean, std = channel_stats(ds.train)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    x_all = (ds.train.images.float() / 255 - m) / s
    y_all = ds.train.labels
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(y_all) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    model.train()
    seen, elapsed = 0, 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(y_all))
        for i in range(0, len(y_all), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
        elapsed += time.perf_counter() - t0
    return seen / elapsed


def trainer_run(keys: dict, epochs: int, run_dir: Path | None) -> dict:
    """Images per second of the trainer's training steps, plus its checkpoint blocking time."""
    cfg = make_config(**keys, epochs=epochs, progress="none")
    trainer = create_trainer(cfg, run_dir=run_dir, run_id="bench" if run_dir else None,
                             store_path=run_dir / "store.db" if run_dir else None)
    blocked = [0.0]
    save = trainer.save_checkpoint

    def timed_save():
        t0 = time.perf_counter()
        save()
        blocked[0] += time.perf_counter() - t0

    trainer.save_checkpoint = timed_save
    epoch_times = []
    orig_finish = trainer._finish_epoch

    def finish():
        epoch_times.append(trainer._epoch_time)
        orig_finish()

    trainer._finish_epoch = finish
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    n = len(trainer.train_loader.labels)
    return {"img_s": epochs * n / sum(epoch_times), "epoch_s": statistics.mean(epoch_times),
            "blocked_s": blocked[0], "wall_s": wall}


def loader_share(keys: dict, steps: int = 30) -> tuple[float, float]:
    """(seconds per batch of loading+augmentation, seconds per full training step) on the same batches."""
    cfg = make_config(**keys, epochs=1, progress="none")
    trainer = create_trainer(cfg, run_dir=None, run_id=None, store_path=None)
    loader = trainer.train_loader
    n = min(steps, loader.steps(0, 0))
    t0 = time.perf_counter()
    for step in range(n):
        loader.batch(0, 0, step)
    load = (time.perf_counter() - t0) / n
    trainer.start_steps()
    t0 = time.perf_counter()
    for step in range(n):
        x, y = loader.batch(0, 0, step)
        trainer.train_step(x, y, step / n, 1 / n)
    full = (time.perf_counter() - t0) / n
    return load, full


RESULTS = ROOT / "benchmarks" / "results" / "foundation.json"


def render(data: dict) -> list[str]:
    """The section's lines, every figure and the header read from the stored measurements (``data``, as
    :func:`main` saves them to benchmarks/results/foundation.json)."""
    env = data["env"]
    head = (f"torch {env['torch']}, {env['threads']} thread, {env['date']}, {env['reps']} interleaved "
            f"repetitions, {env['minutes']:.0f} min, load average {env['load']:.1f} on {env['cores']} cores at the "
            f"end")
    lines = ["Written by `python -m benchmarks.foundation` (" + head + "). " + NOTE + " Absolute img/s and ms are "
             "medians and depend on the machine's load; compare the ratios.", "",
             "## Foundation", "",
             "### Trainer throughput vs a minimal hand-written loop (target >= 0.95)", "",
             "| workload | hand loop img/s | trainer img/s | trainer / hand |", "|---|---|---|---|"]
    lines += [f"| {n} | {h:.0f} | {o:.0f} | {fmt(r)} |" for n, h, o, r in data["speed"]]
    lines += ["", "Both train the same model from the same initialization on the same in-memory tensors, batch size, "
              "SGD and cosine schedule, without augmentation; only training steps are timed (evaluation is "
              "measured by `benchmarks.evaluation`). The trainer also accumulates per-member metrics, checks the "
              "loss for NaN every step and fires the events.", "",
              "### Data loading and augmentation share of a step (target <= 5%)", "",
              "| workload | load+crop+flip+normalize ms/batch | full step ms | share |", "|---|---|---|---|"]
    lines += [f"| {n} | {a:.2f} | {b:.1f} | {fmt_pct(s)} |" for n, a, b, s in data["load"]]
    lines += ["", "### Checkpointing every epoch (target <= 2% of epoch time)", "",
              "| workload | training thread blocked (share of train time) | throughput lost, runs with vs without "
              "checkpoints |", "|---|---|---|"]
    lines += [f"| {n} | {fmt_pct(b)} | {fmt_pct(d, bold=False)} |" for n, b, d in data["checkpoint"]]
    lines += ["", "Checkpoints are written on a background thread from a snapshot; the blocked share is the snapshot "
              "time. The run-vs-run difference includes the background write competing for the cores and is "
              "within the run-to-run noise (a negative value means the checkpointed run happened to be faster).",
              ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--from-results", action="store_true", help="measure nothing: write the section from the "
                                                                "stored measurements")
    args = ap.parse_args()
    if args.from_results:
        lines = render(json.loads(RESULTS.read_text()))
        write_section("foundation", lines, Path(args.out))
        print("\n".join(lines))
        return
    threads = 1
    torch.set_num_threads(threads)
    reps = 2 if args.quick else args.reps
    t_start = time.perf_counter()
    rows_speed, rows_load, rows_ckpt = [], [], []
    for name, keys in WORKLOADS.items():
        keys = dict(keys, augment="none", threads=threads)
        epochs = 3 if name == "cnn-digits" else 1
        hand_loop(keys, 1)  # warm up allocator and kernels
        hand, ours, ours_ckpt = [], [], []
        blocked_share = []
        for _ in range(reps):
            hand.append(hand_loop(keys, epochs))
            ours.append(trainer_run(keys, epochs, None)["img_s"])
            with tempfile.TemporaryDirectory() as tmp:
                r = trainer_run(keys, epochs, Path(tmp) / "run")
            ours_ckpt.append(r["img_s"])
            blocked_share.append(r["blocked_s"] / (r["epoch_s"] * epochs))
            print(f"{name}: hand {hand[-1]:.0f} img/s, trainer {ours[-1]:.0f}, trainer+checkpoints "
                  f"{ours_ckpt[-1]:.0f}", flush=True)
        rows_speed.append((name, statistics.median(hand), statistics.median(ours),
                           [o / h for o, h in zip(ours, hand)]))
        rows_ckpt.append((name, blocked_share, [1 - c / o for c, o in zip(ours_ckpt, ours)]))
        aug = dict(keys, augment="crop+flip")
        shares = [loader_share(aug) for _ in range(reps)]
        rows_load.append((name, statistics.median(s[0] for s in shares) * 1e3,
                          statistics.median(s[1] for s in shares) * 1e3, [s[0] / s[1] for s in shares]))
    data = {"env": {"torch": torch.__version__, "threads": threads, "date": time.strftime("%Y-%m-%d"), "reps": reps,
                    "minutes": (time.perf_counter() - t_start) / 60, "load": os.getloadavg()[0],
                    "cores": os.cpu_count()},
            "speed": rows_speed, "load": rows_load, "checkpoint": rows_ckpt}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1))
    lines = render(data)
    write_section("foundation", lines, Path(args.out))
    print("\n".join(["# Benchmarks", ""] + lines))


if __name__ == "__main__":
    main()
