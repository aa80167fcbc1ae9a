"""Pilot: seconds per training epoch (1,000 Fashion-MNIST images, batch 64, one thread) and per full-test evaluation
(10,000 images) of the models the reproductions consider. Prints one JSON line per model."""

import json
import sys
import time

import torch

from resprout.config import make_config
from resprout.run import create_trainer

torch.set_num_threads(1)
MODELS = {
    "cnn-w1": dict(model="cnn"),
    "cnn-w0.5": dict(model="cnn", width=0.5),
    "cnn-w0.25": dict(model="cnn", width=0.25),
    "resnet20-w0.5": dict(model="resnet20", width=0.5),
    "resnet20-w1": dict(model="resnet20"),
    "resnet32-w1": dict(model="resnet32"),
    "vgg11gap-w0.25": dict(model="vgg11", width=0.25, model_options={"head": "gap"}),
    "vgg11gap-w0.5": dict(model="vgg11", width=0.5, model_options={"head": "gap"}),
    "mobilenetv2-w0.5-16px": dict(model="mobilenetv2", width=0.5, image_size=16, channels=3),
    "mobilenetv2-w0.5-28px": dict(model="mobilenetv2", width=0.5, channels=3),
}
for name in (sys.argv[1:] or MODELS):
    keys = dict(data="fashion-mnist", per_class=100, batch_size=64, epochs=2, progress="none", threads=1,
                eval_every=1000, **MODELS[name])
    tr = create_trainer(make_config(**keys), run_dir=None, run_id=None, store_path=None)
    times = []
    orig = tr._finish_epoch

    def finish():
        times.append((tr._epoch_time, None))
        orig()

    tr._finish_epoch = finish
    t0 = time.perf_counter()
    tr.fit()
    wall = time.perf_counter() - t0
    ev0 = time.perf_counter()
    m = tr.evaluate(tr.members["model"].model, "test")
    ev = time.perf_counter() - ev0
    params = sum(p.numel() for p in tr.members["model"].model.parameters())
    print(json.dumps({"model": name, "epoch_s": [round(t, 2) for t, _ in times], "full_test_eval_s": round(ev, 2),
                      "params": params, "wall_2_epochs_s": round(wall, 1)}), flush=True)
