"""Precision and memory layout: the trainer against a hand loop in fp32, fp32 + channels-last, bf16 and bf16 +
channels-last, and bf16's accuracy against fp32. Writes the "precision" and "precision-parity" sections of
BENCHMARKS.md.

Speed (``python -m benchmarks.precision [--reps N] [--steps N]``): for each model (the CNN on 8x8 digits; ResNet-20,
VGG-11 and MobileNetV2 on 32x32x3 images) and each setting, a plain hand-written loop (forward and cross-entropy
under ``torch.autocast`` for bf16, backward outside it, SGD with the run's momentum, weight decay and learning rate)
and the trainer's training step run the same steps on the same batches from the same initial weights, interleaved
(hand, trainer, for every setting, then again), one thread. Reported: median (min-max) over the repetitions of
trainer / hand (target >= 0.95) and of each setting's hand-loop speed over fp32 NCHW (target: bf16 + channels-last
>= 1.5x for ResNet-20 on a CPU with native bf16). The section names the CPU capability torch detected: on a CPU
without AVX-512 BF16 or AMX torch emulates bf16 (this script allows it, to measure it), and ``precision=auto``
resolves to fp32 there.

Accuracy (``--parity``): Fashion-MNIST at 100 images per class, ResNet-20, 30 epochs, seeds 0, 1, 2, in bf16 and
in fp32 (the run directories under benchmarks/runs/precision-parity are reused by a rerun). The means "agree" when
their difference is within two standard errors of the difference. ``--probe`` trains one epoch in each precision
and writes the estimated time of the whole comparison instead.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
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
from resprout.config import make_config  # noqa: E402
from resprout.engine import precision as prec  # noqa: E402
from resprout.engine.optim import OPTIM_KEYS  # noqa: E402
from resprout.run import create_trainer  # noqa: E402

IMAGES32 = dict(data="synthetic", data_options={"num_classes": 10, "n_train": 640, "n_test": 64, "image_size": 32,
                                                "channels": 3})
WORKLOADS = {  # the CNN's steps are short: it runs STEPS_CNN times as many
    "cnn (digits 8x8)": dict(data="digits", model="cnn"),
    "resnet20 (32x32x3)": dict(IMAGES32, model="resnet20"),
    "vgg11 (32x32x3)": dict(IMAGES32, model="vgg11"),
    "mobilenetv2 (32x32x3)": dict(IMAGES32, model="mobilenetv2"),
    # grafting-table4's network: small tensors, where autocast's cost per operation weighs most
    "mobilenetv2-w0.25 (16x16x3)": dict(IMAGES32, data_options={**IMAGES32["data_options"], "image_size": 16},
                                        model="mobilenetv2", width=0.25),
}
SETTINGS = {"fp32": ("fp32", False), "fp32 + channels-last": ("fp32", True), "bf16": ("bf16", False),
            "bf16 + channels-last": ("bf16", True)}
BATCH = 64
STEPS_CNN = 10
PARITY = dict(data="fashion-mnist", per_class=100, model="resnet20", epochs=30, batch_size=64)
PARITY_SEEDS = (0, 1, 2)
PARITY_DIR = ROOT / "benchmarks" / "runs" / "precision-parity"


def _trainer(keys: dict, precision: str, channels_last: bool, batch: int, device: str):
    cfg = make_config(**{"threads": 1, **keys}, batch_size=batch, epochs=1, augment="none", progress="none",
                      precision=precision, channels_last=channels_last, device=device)
    return create_trainer(cfg, run_dir=None, run_id=None, store_path=None)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":  # kernels run asynchronously: a time is taken once they are done
        torch.cuda.synchronize(device)
    return time.perf_counter()


def trainer_speed(keys: dict, precision: str, channels_last: bool, steps: int, *, batch: int = BATCH,
                  device: str = "cpu") -> float:
    """Images per second of the trainer's training steps (one warm-up step first)."""
    trainer = _trainer(keys, precision, channels_last, batch, device)
    trainer.start_steps()
    loader = trainer.train_loader
    n = loader.steps(0, 0)
    x, y = loader.batch(0, 0, 0)
    trainer.train_step(x, y, 0.0, 1 / n)
    t0 = _clock(trainer.device)
    for s in range(1, steps + 1):
        x, y = loader.batch(0, 0, s % n)
        trainer.train_step(x, y, s / n, 1 / n)
    return steps * batch / (_clock(trainer.device) - t0)


def hand_speed(keys: dict, precision: str, channels_last: bool, steps: int, *, batch: int = BATCH,
               device: str = "cpu") -> float:
    """Images per second of the plainest correct loop on the same model, batches and optimizer settings (autocast
    around forward and loss; fp16 with a gradient scaler)."""
    # the trainer only for its initial model (in the setting's layout and device) and its batches
    trainer = _trainer(keys, precision, channels_last, batch, device)
    model = copy.deepcopy(trainer.members["model"].model)
    loader = trainer.train_loader  # the same in-memory batches (gather and normalize) the trainer takes
    n = loader.steps(0, 0)
    spec = {k: getattr(trainer.config, k) for k in OPTIM_KEYS}
    opt = torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=spec["momentum"],
                          weight_decay=spec["weight_decay"])
    dev = trainer.device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(trainer.precision)
    cast = (lambda: torch.autocast(dev.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    scaler = torch.amp.GradScaler(dev.type) if trainer.precision == "fp16" else None
    schedule = trainer.schedule
    del trainer
    model.train()
    t0 = 0.0
    for s in range(steps + 1):
        if s == 1:  # after the warm-up step
            t0 = _clock(dev)
        x, y = loader.batch(0, 0, s % n)
        with cast():
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        for group in opt.param_groups:  # the run's schedule
            group["lr"] = spec["lr"] * schedule.factor(s / n, 1 / n)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return steps * batch / (_clock(dev) - t0)


def capability_note() -> tuple[str, bool]:
    native = prec.cpu_native_bf16()
    cap = prec.cpu_capability()
    if native:
        return f"CPU capability {cap}, native bf16 (AVX-512 BF16 or AMX): `precision=auto` is bf16 here", True
    return (f"CPU capability {cap}: **no native bf16** (`torch.cpu._is_avx512_bf16_supported()` and "
            f"`torch.cpu._is_amx_tile_supported()` are False), so torch emulates bf16 and the bf16 columns measure "
            f"the emulation; `precision=auto` resolves to fp32 on this machine and `precision=bf16` is refused "
            f"unless `{prec.EMULATED_ENV}=1`"), False


def speed(args) -> None:
    torch.set_num_threads(1)
    os.environ[prec.EMULATED_ENV] = "1"  # measure bf16 even where it is emulated (the note says so)
    os.environ.pop(prec.PORTABLE_ENV, None)
    note, native = capability_note()
    models = [m for m in WORKLOADS if not args.models or any(m.startswith(k) for k in args.models)]
    t_start = time.perf_counter()
    rows, verdicts, summary, ratios = [], [], [], []
    for name in models:
        keys = WORKLOADS[name]
        hand = {s: [] for s in SETTINGS}
        ours = {s: [] for s in SETTINGS}
        steps = args.steps * (STEPS_CNN if name.startswith("cnn") else 1)
        for _ in range(args.reps):
            for setting, (precision, channels_last) in SETTINGS.items():
                hand[setting].append(hand_speed(keys, precision, channels_last, steps))
                ours[setting].append(trainer_speed(keys, precision, channels_last, steps))
                print(f"{name} {setting}: hand {hand[setting][-1]:.1f} img/s, trainer {ours[setting][-1]:.1f}",
                      flush=True)
        def over_fp32(setting: str) -> str:
            return fmt([h / f for h, f in zip(hand[setting], hand["fp32"])], suffix="x", bold=False)

        bf16_over_cl = statistics.median(b / f for b, f in zip(hand["bf16 + channels-last"],
                                                               hand["fp32 + channels-last"]))
        cl_over_nchw = statistics.median(h / f for h, f in zip(hand["fp32 + channels-last"], hand["fp32"]))
        slower = " (slower than fp32 + channels-last: precision=fp32 trains it faster)" if bf16_over_cl < 1 else ""
        cl_slower = " (slower than NCHW in fp32)" if cl_over_nchw < 1 else ""
        summary.append(f"{name.split(' ')[0]} {over_fp32('fp32 + channels-last')} with channels-last{cl_slower}, "
                       f"{over_fp32('bf16 + channels-last')} with bf16 + channels-last{slower}")
        if bf16_over_cl < 1:
            verdicts.append(f"{name}: bf16 + channels-last at {bf16_over_cl:.2f}x the speed of fp32 + channels-last "
                            f"(hand loop, median): `precision=auto`'s bf16 is the slower choice for this workload "
                            f"here; `precision=fp32` trains it faster")
        for setting in SETTINGS:
            ratio = [o / h for o, h in zip(ours[setting], hand[setting])]
            ratios += ratio
            gain = [h / f for h, f in zip(hand[setting], hand["fp32"])]
            rows.append(f"| {name} | {setting} | {statistics.median(hand[setting]):.1f} | "
                        f"{statistics.median(ours[setting]):.1f} | {fmt(ratio)} | "
                        f"{'1 (the reference)' if setting == 'fp32' else fmt(gain, suffix='x')} |")
            if statistics.median(ratio) < 0.95:
                verdicts.append(f"{name}, {setting}: trainer / hand {statistics.median(ratio):.2f}, below the 0.95 "
                                f"target")
        if name.startswith("resnet20"):
            gain = statistics.median(h / f for h, f in zip(hand["bf16 + channels-last"], hand["fp32"]))
            met = "met" if gain >= 1.5 else "**not met**"
            why = "" if native else " (bf16 is emulated on this CPU, see above: the target needs native bf16)"
            verdicts.append(f"ResNet-20 bf16 + channels-last over fp32: {gain:.2f}x, the 1.5x target {met}{why}")
        verdicts.append(f"{name}: fp32 channels-last over NCHW {cl_over_nchw:.2f}x (hand loop, median)")
    minutes = (time.perf_counter() - t_start) / 60
    write_section("precision", [
        "## Precision and memory layout",
        "",
        f"`python -m benchmarks.precision --reps {args.reps} --steps {args.steps}` (torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}, 1 thread, batch {BATCH}, {args.reps} interleaved repetitions of "
        f"{args.steps} timed steps ({STEPS_CNN * args.steps} for the CNN) after one warm-up step, {minutes:.0f} min, {machine_note()}). {note}.",
        "",
        "Training images per second (medians) of a plain hand loop and of the trainer on the same steps, batches "
        "and initial weights; the ratios are computed per repetition. " + NOTE,
        "",
        "| model | setting | hand img/s | trainer img/s | trainer / hand | hand speed over fp32 NCHW |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        *[f"* {v}" for v in verdicts],
        "",
        "`channels_last=auto` turns channels-last on for every built-in and tv:/timm: model (a rule: all are 2-d "
        "CNNs fed image batches) and off for a module of your own; the channels-last rows above test the rule per "
        "model and precision, and the summary in docs/precision.md names a model where it is slower.",
    ])
    bf16 = "native" if native else "emulated by torch on this CPU, hence slower"
    write_section("precision-summary", [
        f"Measured by `python -m benchmarks.precision` ({time.strftime('%Y-%m-%d')}, CPU capability "
        f"{prec.cpu_capability()}, bf16 {bf16}, 1 thread, batch {BATCH}; BENCHMARKS.md, \"Precision and memory "
        f"layout\"), speed over fp32 NCHW, median (min-max) of {args.reps} repetitions: " + "; ".join(summary)
        + f". The trainer ran at {min(ratios):.2f}-{max(ratios):.2f} of a hand loop's speed in these settings.",
    ], ROOT / "docs" / "precision.md")


# -- accuracy parity ---------------------------------------------------------------------------------------------------
def _parity_keys(precision: str, seed: int) -> dict:
    return dict(PARITY, precision=precision, seed=seed, threads=1, progress="none")


def probe(args) -> None:
    """One epoch in each precision: the estimated time of the whole comparison."""
    from resprout.run import train

    os.environ[prec.EMULATED_ENV] = "1"
    os.environ.pop(prec.PORTABLE_ENV, None)
    torch.set_num_threads(1)
    seconds = {}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        train(**dict(_parity_keys(precision, 0), epochs=1), save=False)
        seconds[precision] = time.perf_counter() - t0
        print(f"{precision}: one epoch (with its evaluation of the test split) {seconds[precision]:.0f} s", flush=True)
    # a 30-epoch run evaluates every 10th epoch (auto cadence): 3 evaluations, one of them in the probe's epoch
    total_h = len(PARITY_SEEDS) * PARITY["epochs"] * sum(seconds.values()) / 3600
    note, _ = capability_note()
    write_section("precision-parity", [
        "## Precision: bf16 accuracy against fp32",
        "",
        f"Not run yet on this machine. `python -m benchmarks.precision --probe` ({time.strftime('%Y-%m-%d')}, "
        f"1 thread, {machine_note()}; {note}) trained one epoch of the comparison (Fashion-MNIST at 100 images per "
        f"class, ResNet-20) in fp32 in {seconds['fp32']:.0f} s and in bf16 in {seconds['bf16']:.0f} s, evaluation "
        f"of the 10,000 test images included; 30 epochs x 3 seeds x both precisions is therefore at most about "
        f"{total_h:.1f} h on one core (an upper bound: the probe evaluated its only epoch, a 30-epoch run "
        f"evaluates every 10th).",
        "",
        "Run it with `python -m benchmarks.precision --parity` (finished runs under benchmarks/runs/precision-parity "
        "are reused).",
    ])


def parity(args) -> None:
    from resprout.run import train

    os.environ[prec.EMULATED_ENV] = "1"
    os.environ.pop(prec.PORTABLE_ENV, None)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    top1: dict[str, list[float]] = {}
    for precision in ("fp32", "bf16"):
        for seed in PARITY_SEEDS:
            result = train(**_parity_keys(precision, seed), out=PARITY_DIR / f"{precision}-s{seed}")
            top1.setdefault(precision, []).append(100 * result["final"]["model"]["top1"])
            print(f"{precision} seed {seed}: {top1[precision][-1]:.2f}", flush=True)
    mean = {p: statistics.mean(v) for p, v in top1.items()}
    sd = {p: statistics.stdev(v) for p, v in top1.items()}
    d = mean["bf16"] - mean["fp32"]
    se = (sd["bf16"] ** 2 / len(top1["bf16"]) + sd["fp32"] ** 2 / len(top1["fp32"])) ** 0.5
    agree = abs(d) <= 2 * se
    verdict = (f"the means **agree** within their spread: the difference {d:+.2f} points is within two standard "
               f"errors ({2 * se:.2f})" if agree else
               f"the means **do not agree**: the difference {d:+.2f} points exceeds two standard errors "
               f"({2 * se:.2f})")
    note, _ = capability_note()
    rows = [f"| {p} | {' / '.join(f'{v:.2f}' for v in top1[p])} | {mean[p]:.2f} ± {sd[p]:.2f} |" for p in top1]
    write_section("precision-parity", [
        "## Precision: bf16 accuracy against fp32",
        "",
        f"`python -m benchmarks.precision --parity` ({time.strftime('%Y-%m-%d')}, 1 thread, "
        f"{(time.perf_counter() - t0) / 60:.0f} min for the runs not reused, {machine_note()}; {note}): Fashion-MNIST "
        f"at 100 images per class, ResNet-20, 30 epochs, final test top-1 (%) of seeds 0, 1, 2.",
        "",
        "| precision | seeds 0 / 1 / 2 | mean ± std |",
        "|---|---|---|",
        *rows,
        "",
        f"bf16 against fp32: {verdict}.",
    ])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per measurement")
    ap.add_argument("--models", nargs="*", help="only these models (name prefixes, e.g. cnn resnet20)")
    ap.add_argument("--parity", action="store_true", help="the bf16 vs fp32 accuracy comparison (hours on a CPU)")
    ap.add_argument("--probe", action="store_true", help="estimate the accuracy comparison's time from one epoch")
    args = ap.parse_args()
    if args.parity:
        parity(args)
    elif args.probe:
        probe(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
