"""Pilot: the plain CE baseline of a reproduction's model at E and 2E epochs (seed 0, one thread, full 10,000-image
test set at the end), to choose E where doubling the epochs gains less than one point.

    python reproductions/pilots/budget.py NAME E [E2 ...]   (NAME: a workload below)

Prints one JSON line per run: top-1 at the last epoch, training seconds, wall seconds."""

import json
import sys
import time

import torch

from resprout.run import train

torch.set_num_threads(1)
WORKLOADS = {
    "cnn-w0.5": dict(model="cnn", width=0.5),
    "cnn-w0.25": dict(model="cnn", width=0.25),
    "cnn-w0.125": dict(model="cnn", width=0.125),
    "cnn-w1": dict(model="cnn"),
    "resnet20-w1": dict(model="resnet20"),
    "resnet20-w0.5": dict(model="resnet20", width=0.5),
    "vgg11gap-w0.5": dict(model="vgg11", width=0.5, model_options={"head": "gap"}),
    "vgg11gap-w0.25": dict(model="vgg11", width=0.25, model_options={"head": "gap"}),
    "mobilenetv2-w0.5-16px": dict(model="mobilenetv2", width=0.5, image_size=16, channels=3),
    "mobilenetv2-w0.25-16px": dict(model="mobilenetv2", width=0.25, image_size=16, channels=3),
}
name, epochs = sys.argv[1], [int(e) for e in sys.argv[2:]]
base, _, batch = name.partition("-b")  # "cnn-w0.5-b32": batch 32 (default 64)
for e in epochs:
    t0 = time.perf_counter()
    r = train(data="fashion-mnist", per_class=100, epochs=e, seed=0, threads=1, progress="none",
              eval_every=100000, save=False, batch_size=int(batch or 64), **WORKLOADS[base])
    print(json.dumps({"workload": name, "epochs": e, "top1": round(100 * r["final"]["model"]["top1"], 2),
                      "wall_s": round(time.perf_counter() - t0, 1)}), flush=True)
