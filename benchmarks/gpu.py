"""The GPU check: one command (``make gpu-check`` or ``python -m benchmarks.gpu``), about 10 minutes on one GPU.

On CUDA it runs:

1. every method for one short epoch (small synthetic images, a half-width CNN; a teacher CNN for the methods that
   distil) in fp32, bf16 and fp16: each must finish with finite fp32 weights;
2. the trainer's training images per second against a plain hand loop with the same settings (ResNet-20 on 32x32x3
   images, batch 128, channels-last) in fp32, bf16 and fp16: trainer / hand (target >= 0.95), and the hand loop's
   bf16 and fp16 speed over fp32;
3. data-parallel training (DDP) over every visible GPU with ``torchrun`` in bf16 (or fp16 where the GPU has no
   bf16).

It writes one markdown table (``gpu-check.md``, or ``--out``) and prints it. Without CUDA it runs nothing, says
what it would run, and exits 0.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRECISIONS = ("fp32", "bf16", "fp16")
TINY = dict(data="synthetic", data_options={"num_classes": 4, "n_train": 256, "n_test": 48, "image_size": 8},
            model="cnn", width=0.5, epochs=1, batch_size=32, eval_batch_size=64, lr=0.05, progress="none")
TEACHER = {"teacher": ["module:T"]}
# what each method needs to do its work within one short run (generations, a teacher, a P x K batch)
METHOD_KEYS = {
    "ce": {}, "ls": {}, "cskd": {}, "ke": {"generations": 2}, "adacos": {},
    "triplet": {"batch_size": 20, "method_options": {"triplet": {"k": 5, "dim": 16}}},  # P x K = 4 x 5
    "kd": TEACHER, "fitnet": TEACHER, "at": TEACHER, "dln": TEACHER,
    "ktan": {**TEACHER, "method_options": {"ktan": {"regressor_epochs": 0.25, "mse_epochs": 0.25}}},
    "ban": {"generations": 2}, "dml": {}, "graft": {"epochs": 2},
    "nr": {"method_options": {"nr": {"every": 0.25}}}, "slimming": {"epochs": 2},
    "repr": {"epochs": 3}, "dsd": {"epochs": 3},
}
SPEED = dict(data="synthetic", data_options={"num_classes": 10, "n_train": 5120, "n_test": 256, "image_size": 32,
                                             "channels": 3}, model="resnet20")
SPEED_BATCH, SPEED_STEPS = 128, 30


@dataclass
class Check:
    kind: str  # "method", "speed" or "ddp"
    name: str
    precision: str
    result: str = "not run"
    numbers: dict = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "method":
            return f"method={self.name} one short epoch in {self.precision}"
        if self.kind == "speed":
            return f"{self.name}: trainer vs hand loop, images/s in {self.precision}"
        return f"{self.name} in {self.precision}"


def method_keys(name: str, precision: str) -> dict:
    return {**TINY, "method": name, "precision": precision, **METHOD_KEYS[name]}


def plan(gpus: int) -> list[Check]:
    """Every check the command runs with ``gpus`` visible GPUs (the DDP one names the process count)."""
    checks = [Check("method", m, p) for m in METHOD_KEYS for p in PRECISIONS]
    checks += [Check("speed", "resnet20 32x32x3 batch 128 channels-last", p) for p in PRECISIONS]
    checks.append(Check("ddp", f"torchrun DDP over {max(gpus, 1)} GPU(s)", "bf16"))
    return checks


def table(checks: list[Check], header: str) -> str:
    """The markdown table of the checks' results."""
    lines = [header, "", "| check | precision | result | numbers |", "|---|---|---|---|"]
    for c in checks:
        numbers = ", ".join(f"{k} {v}" for k, v in c.numbers.items())
        lines.append(f"| {c.describe().removesuffix(f' in {c.precision}')} | {c.precision} | {c.result} | "
                     f"{numbers} |")
    return "\n".join(lines) + "\n"


# -- the checks (CUDA) -------------------------------------------------------------------------------------------------
def run_method(check: Check, device: str) -> None:
    import torch

    from resprout.config import make_config
    from resprout.models import build_model
    from resprout.run import create_trainer

    keys = {**method_keys(check.name, check.precision), "device": device}
    teachers = []
    if "teacher" in keys:
        torch.manual_seed(11)
        teachers = [build_model("cnn", in_channels=1, num_classes=4, width=1.0)]
    t0 = time.perf_counter()
    try:
        trainer = create_trainer(make_config(**keys), run_dir=None, run_id=None, store_path=None, teachers=teachers)
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001  (a failure is a row of the table, not the end of the check)
        check.result = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        return
    tensors = [t for m in trainer.members.values() for t in m.model.state_dict().values() if t.is_floating_point()]
    fp32 = all(t.dtype == torch.float32 for t in tensors)
    finite = all(bool(torch.isfinite(t).all()) for t in tensors)
    top1 = [m["top1"] for m in result["final"].values() if "top1" in m]
    check.result = "ok" if fp32 and finite else f"FAILED: weights {'not fp32' if not fp32 else 'not finite'}"
    check.numbers = {"seconds": f"{time.perf_counter() - t0:.1f}",
                     "test top1": f"{100 * max(top1):.1f}" if top1 else "-"}


def run_speed(checks: list[Check], device: str) -> None:
    from benchmarks.precision import hand_speed, trainer_speed

    hand, ours = {}, {}
    for c in checks:
        try:
            hand_speed(SPEED, c.precision, True, 3, batch=SPEED_BATCH, device=device)  # warm-up (cudnn, autotune)
            hand[c.precision] = hand_speed(SPEED, c.precision, True, SPEED_STEPS, batch=SPEED_BATCH, device=device)
            ours[c.precision] = trainer_speed(SPEED, c.precision, True, SPEED_STEPS, batch=SPEED_BATCH,
                                              device=device)
        except Exception as e:  # noqa: BLE001
            c.result = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            continue
        ratio = ours[c.precision] / hand[c.precision]
        c.result = "ok" if ratio >= 0.95 else "below the 0.95 target"
        c.numbers = {"hand img/s": f"{hand[c.precision]:.0f}", "trainer img/s": f"{ours[c.precision]:.0f}",
                     "trainer / hand": f"{ratio:.2f}"}
        if c.precision != "fp32" and "fp32" in hand:
            c.numbers[f"{c.precision} over fp32 (hand)"] = f"{hand[c.precision] / hand['fp32']:.2f}x"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ddp(check: Check, gpus: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        args = ["data=synthetic", "data.num_classes=10", "data.n_train=5120", "data.n_test=512", "data.image_size=32",
                "data.channels=3", "model=resnet20", "epochs=1", "batch_size=256", "device=cuda",
                f"precision={check.precision}", "--out", str(Path(tmp) / "run"), "--quiet"]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "resprout", "train", *args]
        env = {**os.environ, "RESPROUT_STORE": str(Path(tmp) / "store.db"),
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        check.result = f"FAILED (exit {proc.returncode}): {last[:160]}"
        return
    check.result = "ok"
    check.numbers = {"processes": str(gpus), "seconds (whole command)": f"{seconds:.0f}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu-check.md", help="where the markdown table is written")
    ap.add_argument("--methods", nargs="*", help="only these methods")
    args = ap.parse_args(argv)
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    checks = [c for c in plan(gpus) if c.kind != "method" or not args.methods or c.name in args.methods]
    if not gpus:
        print("no CUDA device here: nothing was run. With CUDA, `python -m benchmarks.gpu` runs "
              f"{len(checks)} checks (about 10 minutes on one GPU) and writes {args.out}:")
        for c in checks:
            print(f"  {c.describe()}")
        return 0
    from resprout.engine.precision import native_bf16

    bf16 = native_bf16(torch.device("cuda", 0))
    t0 = time.perf_counter()
    for c in checks:
        if c.precision == "bf16" and not bf16:
            if c.kind == "ddp":
                c.precision = "fp16"
            else:
                c.result = "skipped: this GPU has no native bf16"
        if c.kind == "method" and c.result == "not run":
            run_method(c, "cuda")
            print(f"{c.describe()}: {c.result}", flush=True)
    run_speed([c for c in checks if c.kind == "speed" and c.result == "not run"], "cuda")
    for c in checks:
        if c.kind == "ddp":
            run_ddp(c, gpus)
    name = torch.cuda.get_device_name(0)
    header = (f"GPU check ({time.strftime('%Y-%m-%d')}, {gpus} x {name}, torch {torch.__version__}, CUDA "
              f"{torch.version.cuda}, {(time.perf_counter() - t0) / 60:.1f} min)")
    text = table(checks, header)
    Path(args.out).write_text(text)
    print(text)
    failed = [c for c in checks if c.result.startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
