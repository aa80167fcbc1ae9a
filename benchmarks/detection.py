"""Detector speed and memory (issue 22): training img/s of a student detector's plain step (``method=ce``) and of a
KTAN step on the same batches, evaluation img/s of the student, and the peak memory of each. Writes the "detection"
section of BENCHMARKS.md.

``python -m benchmarks.detection [--reps N] [--steps N]`` with the vision environment's python (torchvision): the
workload is the fashion-canvas set at the size of the ktan-table2 reproduction (96-pixel canvases, 2-4 objects, batch
8, its RPN sizes), the student ``tv-det:fasterrcnn_mobilenet_v3_large_fpn`` and the ktan-table2 teacher
``tv-det:fasterrcnn_resnet50_fpn``, both built by resprout with ``weights=None`` (untrained: speed, not accuracy).

Each measurement runs in its own subprocess (so that ``ru_maxrss``, a high-water mark, is that measurement's own), one
thread, interleaved: for every repetition ce, ktan, eval, then again. In a subprocess the trainer is built as a run
builds it (``create_trainer``), its fit-start and generation-start events run (for KTAN: its setup; Algorithm 1's
regressor pre-training is set to 0 epochs, a one-off before training, not a per-step cost, and the MSE-only first
epoch to 0, so that every timed KTAN step is its adversarial one), then one warm-up step and
``--steps`` timed steps of ``Trainer.train_step`` (the step a run takes) on the same batches for ce and ktan. The
evaluation is ``trainer.evaluate`` of the student over the whole test split (the DetectionTask: predictions in fp32,
then pycocotools' mAP). ``--quick``: tiny sizes, one repetition, two steps: prints its figures and writes nothing (a smoke check).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STUDENT = "tv-det:fasterrcnn_mobilenet_v3_large_fpn"
TEACHER = "tv-det:fasterrcnn_resnet50_fpn"  # the ktan-table2 teacher
TEACHER_LAYER = "backbone.fpn.layer_blocks.3"  # ktan-table2: the teacher's FPN level 3, the student's level 0
FULL = dict(  # reproductions/ktan-table2.toml's sizes
    data_options={"n_train": 400, "n_test": 200, "canvas_size": 96, "objects": [2, 4], "scale": [0.75, 2.0]},
    model_options={"min_size": 96, "max_size": 96, "rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 150,
                   "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 150, "box_batch_size_per_image": 128},
    batch=8)
QUICK = dict(  # the tests' tiny detector
    data_options={"n_train": 8, "n_test": 4, "canvas_size": 64, "objects": [1, 2], "scale": [1.0, 1.5]},
    model_options={"min_size": 64, "max_size": 64, "rpn_pre_nms_top_n_train": 50, "rpn_post_nms_top_n_train": 20,
                   "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20, "box_batch_size_per_image": 32},
    batch=4)
KINDS = ("ce", "ktan", "eval")


# -- one measurement, in its own process ----------------------------------------------------------------------------
def _rss_mb() -> float:
    """The process's resident set now (Linux /proc), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _clock(device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def measure(kind: str, size: dict, steps: int, device: str, precision: str) -> dict:
    import torch

    from resprout.config import make_config
    from resprout.models import build_model
    from resprout.run import create_trainer

    torch.set_num_threads(1)
    keys = dict(data="fashion-canvas", data_options=size["data_options"], model=STUDENT,
                model_options=size["model_options"], batch_size=size["batch"], lr=0.02, epochs=1, threads=1,
                progress="none", precision=precision, device=device, seed=0)
    teachers = []
    if kind == "ktan":
        torch.manual_seed(0)
        teachers = [build_model(TEACHER, in_channels=3, num_classes=10, **size["model_options"]).eval()]
        keys.update(method="ktan", teacher=[f"module:{type(teachers[0]).__name__}"],
                    method_options={"ktan": {"teacher_layer": TEACHER_LAYER, "regressor_epochs": 0.0,
                                                "mse_epochs": 0.0}})
    else:
        keys.update(method="ce")
    trainer = create_trainer(make_config(**keys), run_dir=None, run_id=None, store_path=None, teachers=teachers)
    dev = trainer.device
    out = {"kind": kind, "precision": trainer.precision, "device": str(dev), "threads": torch.get_num_threads()}
    if kind == "eval":
        model = trainer.members["model"].model
        n = len(trainer.dataset.test)
        trainer.evaluate(model, "test")  # warm-up (the first call's allocations and lazy inits)
        base, cuda_mem = _rss_mb(), _cuda_reset(dev)
        t0 = _clock(dev)
        metrics = trainer.evaluate(model, "test")
        seconds = _clock(dev) - t0
        out.update(images=n, seconds=seconds, map_50=metrics["map_50"])
    else:
        trainer.start_steps()
        loader = trainer.train_loader
        per_epoch = loader.steps(0, 0)
        x, y = loader.batch(0, 0, 0)
        trainer.train_step(x, y, 0.0, 1 / per_epoch)  # warm-up
        base, cuda_mem = _rss_mb(), _cuda_reset(dev)
        images = 0
        t0 = _clock(dev)
        for s in range(1, steps + 1):  # the first epoch's batches, cycled (the step counter as a run keeps it)
            trainer.step = s % per_epoch
            x, y = loader.batch(0, 0, trainer.step)
            trainer.train_step(x, y, trainer.step / per_epoch, 1 / per_epoch)
            images += len(x)
        seconds = _clock(dev) - t0
        out.update(images=images, seconds=seconds)
    out.update(img_s=out["images"] / out["seconds"], rss_before_mb=base, peak_rss_mb=_peak_mb(),
               growth_mb=max(0.0, _peak_mb() - base))
    if cuda_mem:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def _cuda_reset(dev) -> bool:
    import torch

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return True
    return False


def run_worker(kind: str, args) -> dict:
    """One measurement in a fresh process (its own ru_maxrss); its result is the last line it prints."""
    cmd = [sys.executable, "-m", "benchmarks.detection", "--worker", kind, "--steps", str(args.steps),
           "--device", args.device, "--precision", args.precision] + (["--quick"] if args.quick else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"benchmarks.detection: the {kind} measurement failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the benchmark ---------------------------------------------------------------------------------------------------
def bench(args) -> None:
    import torch

    from benchmarks._report import write_section
    from benchmarks._spread import fmt, machine_note

    t_start = time.perf_counter()
    res: dict[str, list[dict]] = {k: [] for k in KINDS}
    for rep in range(args.reps):
        for kind in KINDS:  # interleaved: ce, ktan, eval, then again
            r = run_worker(kind, args)
            res[kind].append(r)
            mem = f", CUDA peak {r['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in r else ""
            print(f"rep {rep + 1} {kind}: {r['img_s']:.2f} img/s ({r['images']} images in {r['seconds']:.2f} s), "
                  f"RSS {r['rss_before_mb']:.0f} MB before, peak {r['peak_rss_mb']:.0f} MB "
                  f"(+{r['growth_mb']:.0f}){mem}", flush=True)
    minutes = (time.perf_counter() - t_start) / 60
    ratio = [c["img_s"] / k["img_s"] for c, k in zip(res["ce"], res["ktan"])]  # ktan step time / ce step time
    print(f"ktan step time / plain step time: {fmt(ratio, suffix='x', bold=False)}")
    if args.quick:
        print(f"--quick: {minutes * 60:.0f} s; BENCHMARKS.md not written")
        return

    write_section("detection", render(res, reps=args.reps, steps=args.steps, device=args.device, minutes=minutes,
                                      torch_version=torch.__version__, date=time.strftime("%Y-%m-%d"),
                                      load=machine_note()))
    print(f"wrote the detection section of BENCHMARKS.md ({minutes:.0f} min)")


def render(res: dict[str, list[dict]], *, reps: int, steps: int, device: str, minutes: float, torch_version: str,
           date: str, load: str) -> list[str]:
    """The section's lines from the measurements (``res``: per kind, one result of :func:`measure` a repetition)."""
    from benchmarks._spread import NOTE, fmt

    ratio = [c["img_s"] / k["img_s"] for c, k in zip(res["ce"], res["ktan"])]  # ktan step time / ce step time

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in res[kind])

    cuda = "cuda_peak_mb" in res["ce"][0]
    label = {"ce": "training, plain step (`method=ce`)", "ktan": "training, KTAN step (`method=ktan`, teacher)",
             "eval": "evaluation of the student (test split)"}
    rows = []
    for kind in KINDS:
        img_s = fmt([r["img_s"] for r in res[kind]], bold=False)
        mem = (f"{med(kind, 'cuda_peak_mb'):.0f}" if cuda else
               f"{med(kind, 'peak_rss_mb'):.0f} | +{med(kind, 'growth_mb'):.0f}")
        rows.append(f"| {label[kind]} | {img_s} | {mem} |")
    precision = res["ce"][0]["precision"]
    d, m = FULL["data_options"], FULL["model_options"]
    mem_head = ("| workload | img/s | CUDA peak allocated (MB) |\n|---|---|---|" if cuda else
                "| workload | img/s | peak RSS (MB) | peak RSS growth (MB) |\n|---|---|---|---|")
    memory_text = (
        "CUDA peak: `torch.cuda.max_memory_allocated` over the timed part (reset after the warm-up)." if cuda else
        "Peak RSS is the subprocess's `ru_maxrss` at the end of its measurement (a high-water mark over the whole "
        "process: imports, data, models, warm-up and the timed part); the growth is that peak minus the resident set "
        "just before the timed part (after the warm-up), i.e. how far the timed steps pushed memory above where it "
        "stood, 0 when they stayed below an earlier high-water mark. The KTAN process holds the teacher too.")
    return [
        "## Detectors: speed and memory",
        "",
        f"`python -m benchmarks.detection --reps {reps} --steps {steps}` with the vision environment "
        f"(torch {torch_version}, {date}, 1 thread, device {device}, precision "
        f"{precision} for training, evaluation always fp32 by design (DetectionTask), {reps} interleaved "
        f"repetitions, {minutes:.0f} min, {load}).",
        "",
        f"Workload: the fashion-canvas set at ktan-table2's size ({d['n_train']} train and {d['n_test']} test "
        f"canvases of {d['canvas_size']}x{d['canvas_size']}, {d['objects'][0]}-{d['objects'][1]} objects), batch "
        f"{FULL['batch']}; student `{STUDENT}`, teacher `{TEACHER}` (ktan-table2's), both at min/max size "
        f"{m['min_size']} with ktan-table2's RPN sizes, built by resprout with weights=None (untrained: the "
        f"evaluation's speed depends on how many boxes a detector emits, so a trained one may differ).",
        "",
        f"What is timed, each measurement in its own subprocess: training, {steps} steps of the trainer's "
        f"training step (`Trainer.train_step`, the step a run takes: forward, losses, backward, optimizer) after "
        f"the run's fit-start and generation-start events and one warm-up step, the same batches for ce and ktan; "
        f"KTAN's step is its adversarial step (`ktan.mse_epochs=0`: every timed step is one; a run's first "
        f"`mse_epochs` epoch is CE + MSE without the discriminator's update, cheaper): the teacher's forward, the "
        f"regressor, the discriminator's update and the student's. Algorithm 1's regressor pre-training is a "
        f"one-off before training, not a step cost: set to 0 epochs here (`ktan.regressor_epochs=0`). Evaluation: `trainer.evaluate` of the student over the whole test split "
        f"(predictions, then pycocotools' mAP), after one warm-up evaluation. " + memory_text,
        "",
        mem_head,
        *rows,
        "",
        f"KTAN step time / plain step time (computed per repetition): {fmt(ratio, suffix='x')}. " + NOTE,
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per measurement")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 repetition, 2 steps; writes nothing")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--precision", default="auto", help="the training steps' precision (evaluation is fp32)")
    ap.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if importlib.util.find_spec("torchvision") is None:
        print("benchmarks.detection needs torchvision: run it with the vision environment's python (make vision; "
              "make bench-detection)", file=sys.stderr)
        return 2
    if args.quick:
        args.reps, args.steps = 1, min(args.steps, 2)
    if args.worker:
        print(json.dumps(measure(args.worker, QUICK if args.quick else FULL, args.steps, args.device,
                                 args.precision)))
        return 0
    from resprout.errors import ConfigError, DataError

    try:
        bench(args)
    except (ConfigError, DataError) as e:  # no Fashion-MNIST, say
        print(f"benchmarks.detection: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
