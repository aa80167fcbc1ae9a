"""``resprout slim``: the Knowledge Evolution fit hypothesis of a trained run, as a file anyone can load.

The file is a ``torch.export`` program (``torch.export.load(open(path, "rb")).module()``): it needs neither resprout
nor the model's Python class. The normalization of the training data is built in, so the network takes images as float
tensors in [0, 1], shape (N, C, H, W); its metadata (classes, input shape, split rate, accuracy) is stored beside
the program as ``resprout.json`` (see :func:`load_slim`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from resprout.errors import ConfigError


class Normalized(nn.Module):
    """``net((x - mean) / std)``: a network that takes images in [0, 1]."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def export_slim(trainer, out: str | Path, *, bn: str = "reestimate", source: str | Path = "the run") -> dict:
    """Extract, evaluate and write the slim network of a trained KE run (a trainer with its checkpoint loaded,
    see :func:`resprout.run.open_run`; ``source`` names it in messages); returns the metadata written beside it."""
    from resprout.data.natural import normalization_stats
    from resprout.methods.evolution import KnowledgeEvolution
    from resprout.surgery.profile import profile_model

    ke = next((m for m in trainer.methods if isinstance(m, KnowledgeEvolution)), None)
    if ke is None:
        raise ConfigError(f"{source} is not a Knowledge Evolution run (method={trainer.config.method})")
    member = trainer.members[ke.options.member].model
    shape = trainer.input_shape
    # always fp32, whatever the run's precision: the weights are fp32 (autocast never stores in bf16), BN is
    # re-estimated by fp32 forwards, and the accuracies written beside the file are the fp32 program's own
    slim = ke.slim_network(trainer, reestimate_bn=bn == "reestimate").eval()
    dense_metrics = trainer.evaluate(member, "test", autocast=False)
    slim_metrics = trainer.evaluate(slim, "test", autocast=False)
    ds = trainer.dataset
    mean, std = normalization_stats(ds)
    wrapped = Normalized(slim, mean, std).eval()
    example = torch.rand(2, *shape)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(wrapped, (example,), dynamic_shapes=({0: batch},))
    dense_cost, slim_cost = profile_model(member, shape), profile_model(slim, shape)
    meta = {"input_shape": list(shape), "input_range": [0.0, 1.0], "classes": ds.classes, "mean": mean, "std": std,
            "split_rate": ke.options.split_rate, "bn": bn, "run_dir": str(Path(source).resolve()),
            "test_top1": slim_metrics["top1"], "dense_test_top1": dense_metrics["top1"],
            "params": slim_cost.params, "macs": slim_cost.macs, "dense_params": dense_cost.params,
            "dense_macs": dense_cost.macs, "generation": trainer.generation}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:  # through a file object: torch.export insists on a .pt2 suffix for paths
        torch.export.save(program, fh, extra_files={"resprout.json": json.dumps(meta)})
    return meta


def load_slim(path: str | Path) -> tuple[nn.Module, dict]:
    """The network and metadata written by :func:`export_slim` (plain ``torch.export``; shown here for users)."""
    extra = {"resprout.json": ""}
    with open(path, "rb") as fh:
        program = torch.export.load(fh, extra_files=extra)
    return program.module(), json.loads(extra["resprout.json"])
