"""torch.distributed, as started by ``torchrun``: process group, data-parallel wrapping, reductions.

resprout does not launch processes itself. ``torchrun --nproc_per_node=N -m resprout train ...`` sets the
``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` environment; :func:`init_from_env` joins the group (NCCL on CUDA, gloo on
CPU). Rank 0 alone writes checkpoints, the results store and the progress output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False  # resprout created the process group, so it destroys it when the run ends

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment; a single process needs no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    owned = not dist.is_initialized()
    if owned:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owned)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group we created, after every process got here: a group left to the interpreter's exit
    can abort the process ("terminate called without an active exception") while its peer is still closing."""
    if info.enabled and info.owned and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
