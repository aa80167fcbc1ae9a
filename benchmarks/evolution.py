"""Knowledge Evolution reproduction and speed benchmarks. Writes the "evolution" sections of BENCHMARKS.md.

Reproduction (``python -m benchmarks.evolution``): real small data (digits; Fashion-MNIST with 100 training images
per class), a small CNN and ResNet-20, 3 seeds, mean +- std:

* CE, label smoothing and CS-KD, each at N_1 (the first generation: identical to plain training, since the split
  mask is not applied in the forward pass) and with KE at N_3 and N_10;
* the equal-compute baseline: one CE run as long as all 10 generations together, with one schedule;
* the slim fit hypothesis H_10 (BN statistics copied from the dense network, and re-estimated), with its cost;
* plots: top-1 of N_g and H_g across generations, and the mean magnitude of the fit and reset hypotheses.

Every run is a normal resprout run under ``benchmarks/runs/``: running the script again reuses finished runs and
continues interrupted ones.

Speed (``python -m benchmarks.evolution --speed``), ratios measured in one process:

* slim inference at batch 64: measured speedup of H over N against the ratio of their MACs (target >= 0.75);
* the switch between generations (re-initializing the reset hypothesis and rebuilding the optimizer) against the
  time of one epoch (target <= 1%).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from benchmarks._spread import NOTE, fmt, fmt_pct, machine_note  # noqa: E402
from resprout.analysis.tables import pm  # noqa: E402
from resprout.config import make_config  # noqa: E402
from resprout.methods.evolution import fit_hypothesis  # noqa: E402
from resprout.models import build_model  # noqa: E402
from resprout.run import create_trainer, train  # noqa: E402
from resprout.surgery.profile import profile_model  # noqa: E402

RUNS = ROOT / "benchmarks" / "runs"
FIGURES = ROOT / "benchmarks" / "figures"
SEEDS = (0, 1, 2)
GENERATIONS = 10
EPOCHS = 5
SPLIT_RATE = 0.5
SPEED_REPS = 7  # interleaved repetitions of the speed measurements
SWITCHES = 5  # generation switches timed per workload

WORKLOADS = {
    "digits / cnn": dict(data="digits", model="cnn"),
    "digits / resnet20": dict(data="digits", model="resnet20"),
    "fashion-mnist 100/class / resnet20": dict(data="fashion-mnist", per_class=100, test_per_class=300,
                                               model="resnet20"),
}
COMMON = dict(batch_size=32, epochs=EPOCHS, eval_every=EPOCHS, progress="none", threads=2)
KE = {"ke": {"split": "kels", "split_rate": SPLIT_RATE}}
VARIANTS = {
    "CE": dict(method="ke", generations=GENERATIONS, method_options=KE),
    "LS": dict(method="ke+ls", generations=GENERATIONS, method_options=KE),
    "CS-KD": dict(method="ke+cskd", generations=GENERATIONS, method_options=KE),
    "CE, equal compute": dict(method="ce", generations=1, epochs=EPOCHS * GENERATIONS),
}


def run_dir(workload: str, variant: str, seed: int) -> Path:
    slug = lambda s: "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")  # noqa: E731
    return RUNS / slug(workload) / f"{slug(variant)}-s{seed}"


def reproduce() -> dict:
    results: dict = {}
    t0 = time.time()
    for seed in SEEDS:  # seeds outermost: an early stop still leaves complete rows for the first seeds
        for workload, wkeys in WORKLOADS.items():
            for variant, vkeys in VARIANTS.items():
                keys = {**COMMON, **wkeys, **vkeys, "seed": seed}
                t = time.time()
                r = train(**keys, out=run_dir(workload, variant, seed), store=RUNS / "resprout.db")
                results.setdefault(workload, {}).setdefault(variant, []).append(r)
                print(f"[{time.time() - t0:6.0f}s] {workload} / {variant} / seed {seed}: "
                      f"final {100 * r['final']['model']['top1']:.2f} ({time.time() - t:.0f}s)", flush=True)
    return results


def gen_metric(r: dict, g: int, key: str) -> float:
    return r["generations"][g - 1]["model"][key]


def accuracy_table(results: dict) -> list[str]:
    lines = ["| workload | method | N_1 | KE N_3 | KE N_10 | H_10 (BN copied) | H_10 (BN re-estimated) |",
             "|---|---|---|---|---|---|---|"]
    for workload, variants in results.items():
        for variant, runs in variants.items():
            if variant == "CE, equal compute":
                final = [r["final"]["model"]["top1"] for r in runs]
                lines.append(f"| {workload} | {variant} ({EPOCHS * GENERATIONS} epochs, one schedule) | | | "
                             f"{pm(final)} | | |")
                continue
            n = len(runs[0]["generations"])
            cols = [pm([gen_metric(r, g, "test_top1") for r in runs]) for g in (1, 3, n)]
            slim = [pm([gen_metric(r, n, k) for r in runs]) for k in ("slim_top1", "slim_bnfix_top1")]
            lines.append(f"| {workload} | {variant} | " + " | ".join(cols + slim) + " |")
    return lines


def cost_table(results: dict) -> list[str]:
    lines = ["| workload | dense params | H params | dense MACs | H MACs | MAC ratio |", "|---|---|---|---|---|---|"]
    for workload, variants in results.items():
        r = variants["CE"][0]
        cfg = make_config(**{**COMMON, **WORKLOADS[workload]})
        from resprout.inputs import build_dataset

        ds = build_dataset(cfg)
        dense = profile_model(build_model(cfg.model, in_channels=ds.input_shape[0], num_classes=ds.num_classes),
                              ds.input_shape)
        slim_params, slim_macs = gen_metric(r, 1, "slim_params"), gen_metric(r, 1, "slim_macs")
        lines.append(f"| {workload} | {dense.params:,} | {int(slim_params):,} | {dense.macs / 1e6:.2f} M | "
                     f"{slim_macs / 1e6:.2f} M | {dense.macs / slim_macs:.2f}x |")
    return lines


def plots(results: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    FIGURES.mkdir(parents=True, exist_ok=True)
    files = []
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, (workload, variants) in zip(axes[0], results.items()):
        for variant, runs in variants.items():
            if variant == "CE, equal compute":
                final = np.array([r["final"]["model"]["top1"] for r in runs]) * 100
                ax.axhline(final.mean(), ls="--", color="black", lw=1, label=f"{variant} (mean)")
                continue
            g = np.arange(1, len(runs[0]["generations"]) + 1)
            for key, style, label in (("test_top1", "-", "N_g"), ("slim_bnfix_top1", ":", "H_g, BN re-est.")):
                y = np.array([[gen_metric(r, int(i), key) for i in g] for r in runs]) * 100
                line, = ax.plot(g, y.mean(0), style, label=f"{variant} {label}")
                ax.fill_between(g, y.mean(0) - y.std(0, ddof=1), y.mean(0) + y.std(0, ddof=1), alpha=0.15,
                                color=line.get_color())
        ax.set(title=workload, xlabel="generation", ylabel="test top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    files.append(FIGURES / "ke_generations.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, (workload, variants) in zip(axes[0], results.items()):
        runs = variants["CE"]
        g = np.arange(1, len(runs[0]["generations"]) + 1)
        for key, label in (("fit_abs", "fit hypothesis"), ("reset_abs", "reset hypothesis")):
            y = np.array([[gen_metric(r, int(i), key) for i in g] for r in runs])
            ax.plot(g, y.mean(0), marker="o", label=label)
        ax.set(title=f"{workload} (CE + KE)", xlabel="generation", ylabel="mean |w| over masked layers")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(FIGURES / "ke_hypothesis_magnitudes.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    return files


# -- speed ------------------------------------------------------------------------------------------------------------------
def time_forward(model: torch.nn.Module, x: torch.Tensor, reps: int) -> float:
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
    return (time.perf_counter() - t0) / reps


def slim_speed(reps: int, repeats: int = SPEED_REPS) -> list[str]:
    lines = ["| model, input | layout | dense ms | H ms | measured speedup | MAC ratio | speedup / MAC ratio |",
             "|---|---|---|---|---|---|---|"]
    cases = [("resnet18", 3, 32, {}), ("resnet18", 3, 64, {"stem": "imagenet"}), ("vgg16", 3, 32, {}),
             ("resnet56", 3, 32, {}), ("resnet20", 3, 32, {})]
    for name, c, size, kw in cases:
        torch.manual_seed(0)
        dense = build_model(name, in_channels=c, num_classes=10, **kw).eval()
        slim = fit_hypothesis(dense, (c, size, size), SPLIT_RATE).eval()
        mac_ratio = profile_model(dense, (c, size, size)).macs / profile_model(slim, (c, size, size)).macs
        label = f"{name}{' ' + kw['stem'] + ' stem' if kw else ''}, {c}x{size}x{size}"
        for layout in ("NCHW", "channels_last"):
            x = torch.randn(64, c, size, size)
            d_net, s_net = dense, slim
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
                d_net = copy.deepcopy(dense).to(memory_format=torch.channels_last)
                s_net = copy.deepcopy(slim).to(memory_format=torch.channels_last)
            td, ts = [], []
            for _ in range(repeats):  # interleaved
                td.append(time_forward(d_net, x, reps))
                ts.append(time_forward(s_net, x, reps))
            d, s = statistics.median(td), statistics.median(ts)
            speedups = [a / b for a, b in zip(td, ts)]  # per repetition: dense and slim back to back
            lines.append(f"| {label} | {layout} | {1e3 * d:.1f} | {1e3 * s:.1f} | {fmt(speedups, suffix='x', bold=False)} "
                         f"| {mac_ratio:.2f}x | {fmt([v / mac_ratio for v in speedups])} |")
            print(lines[-1], flush=True)
    return lines


def switch_cost() -> list[str]:
    lines = ["| workload | epoch s | switch ms (re-initialize + new optimizer) | share of an epoch |",
             "|---|---|---|---|"]
    for workload in ("digits / resnet20", "fashion-mnist 100/class / resnet20"):
        cfg = make_config(**{**COMMON, **WORKLOADS[workload], "method": "ke", "generations": SWITCHES + 1,
                             "epochs": 1, "method_options": KE, "threads": 1})
        trainer = create_trainer(cfg, run_dir=None, run_id=None, store_path=None)
        ke = trainer.methods[-1]
        spent = []
        start, build = ke.on_generation_start, trainer._build_optimizers

        def timed_start(t, _start=start):
            t0 = time.perf_counter()
            _start(t)
            spent.append(time.perf_counter() - t0)

        def timed_build(_build=build):
            t0 = time.perf_counter()
            _build()
            spent[-1] += time.perf_counter() - t0

        ke.on_generation_start = timed_start
        trainer._handlers = {e: [timed_start if getattr(h, "__name__", "") == "on_generation_start" else h
                                 for h in hs] for e, hs in trainer._handlers.items()}
        trainer._build_optimizers = timed_build
        epoch_times = []
        finish = trainer._finish_epoch

        def timed_finish(_finish=finish):
            epoch_times.append(trainer._epoch_time)
            _finish()

        trainer._finish_epoch = timed_finish
        trainer.fit()
        # generation 1 has nothing to re-initialize; each switch against the epoch that follows it
        shares = [sw / ep for sw, ep in zip(spent[1:], epoch_times[1:])]
        lines.append(f"| {workload} | {statistics.median(epoch_times):.2f} | {1e3 * statistics.median(spent[1:]):.2f} "
                     f"| {fmt_pct(shares)} |")
        print(lines[-1], flush=True)
    return lines


def test_set_text() -> str:
    """The sentence that says on how many test images each workload is scored (from the data itself)."""
    from resprout.inputs import build_dataset

    parts = []
    for workload, keys in WORKLOADS.items():
        ds = build_dataset(make_config(**{**COMMON, **keys}))
        whole = build_dataset(make_config(**{**COMMON, **keys, "test_per_class": None}))
        n, total = len(ds.test.labels), len(whole.test.labels)
        parts.append(f"{workload}: {n:,} test images" + ("" if n == total else
                                                         f" of the {total:,} (a fixed {keys['test_per_class']} "
                                                         f"per class, `test_per_class={keys['test_per_class']}`)"))
    return "Test-set sizes: " + "; ".join(parts) + "."


def retext() -> None:
    """Add the test-set sizes to the existing accuracy section without re-running it (its tables stay)."""
    from benchmarks._report import BENCHMARKS

    text = BENCHMARKS.read_text()
    start, end = "<!-- evolution:start -->", "<!-- evolution:end -->"
    section = text.partition(start)[2].partition(end)[0].strip("\n").splitlines()
    sentence = test_set_text()
    section = [line for line in section if not line.startswith("Test-set sizes:")]
    at = next(i for i, line in enumerate(section) if line.startswith("Written by"))
    section[at + 1:at + 1] = ["", sentence]
    write_section("evolution", section)
    print(sentence)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--speed", action="store_true", help="only the speed measurements")
    ap.add_argument("--retext", action="store_true", help="only add the test-set sizes to the accuracy section")
    ap.add_argument("--reps", type=int, default=10, help="forwards per speed measurement")
    ap.add_argument("--speed-reps", type=int, default=SPEED_REPS, help="interleaved repetitions of the speed "
                    "measurements")
    args = ap.parse_args()
    if args.retext:
        retext()
        return
    torch.set_num_threads(1 if args.speed else 2)
    stamp = f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}"
    if args.speed:
        lines = ["### Knowledge Evolution: speed", "",
                 f"Written by `python -m benchmarks.evolution --speed` ({stamp}, {machine_note()}). {args.speed_reps} interleaved "
                 f"repetitions of {args.reps} forwards (dense and slim back to back), {SWITCHES} generation "
                 f"switches per workload; split rate {SPLIT_RATE}. Times in ms are medians. " + NOTE, "",
                 "#### Slim fit hypothesis vs dense network, inference at batch 64 (target: speedup >= 0.75 x "
                 "MAC ratio)", ""] + slim_speed(args.reps, args.speed_reps) + [
                 "", "#### Switching generations (target <= 1% of an epoch)", "",
                 "Fashion-MNIST evaluates on 3,000 test images (300 per class), digits on its whole test split; "
                 "the epoch time is training only.", ""] + switch_cost()
        write_section("evolution-speed", lines)
        return
    t0 = time.time()
    results = reproduce()
    files = plots(results)
    minutes = (time.time() - t0) / 60
    lines = ["## Knowledge Evolution", "",
             f"Written by `python -m benchmarks.evolution` ({stamp}; {minutes:.0f} minutes, finished runs are "
             f"reused). Test top-1 (%), mean ± std over seeds {', '.join(map(str, SEEDS))}; {GENERATIONS} "
             f"generations of {EPOCHS} epochs, batch 32, SGD 0.1 cosine per generation, KELS split rate "
             f"{SPLIT_RATE}. N_1 is the first generation, i.e. the plain method; the equal-compute baseline "
             f"trains {EPOCHS * GENERATIONS} epochs under one schedule. H_10 is the slim fit hypothesis after the "
             f"last generation, evaluated with the dense network's BN statistics (as in the paper) and with "
             f"statistics re-estimated on 20 training batches.", "", test_set_text(), ""]
    lines += accuracy_table(results)
    lines += ["", "Cost of the slim network (true parameters and MACs at the workload's input size):", ""]
    lines += cost_table(results)
    lines += ["", *[f"![{f.stem}](benchmarks/figures/{f.name})" for f in files], ""]
    write_section("evolution", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
