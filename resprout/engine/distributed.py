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
        # DDP imports torch._dynamo at its first construction; imported while a group exists, it keeps references
        # to that group (torch 2.13), so destroy_process_group() would not free it and gloo's threads would run on
        # into the interpreter's exit. Imported first, the group is freed when the run leaves it.
        import torch._dynamo  # noqa: F401
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


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_gather_tensor(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's tensor ``t`` (same shape and dtype on every rank), in rank order (``[t]`` in one process).
    Mutual learning with one peer per rank exchanges its logits this way."""
    if not info.enabled:
        return [t]
    t = t.detach().contiguous()
    out = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t)
    return out


def broadcast_surgery_args(args: dict, info: DistInfo) -> dict:
    """Rank 0's surgery arguments on every rank, so that every rank cuts and adds the same channels (a plan
    computed from a rank's own statistics would otherwise differ between ranks and the replicas would diverge)."""
    return broadcast_object(args, info)


def ring_exchange(state: dict[str, torch.Tensor], info: DistInfo) -> dict[str, torch.Tensor]:
    """Send ``state`` (a state dict) to rank ``r + 1`` and return the one of rank ``r - 1`` (ring order).

    Grafting's Algorithm 1 mixes each network with the previous one: with one peer per rank this is that
    exchange. The tensors are flattened into one buffer per dtype, so the ring costs one send and one receive
    per dtype. A single process gets its own state back."""
    if not info.enabled:
        return state
    keys = list(state)
    by_dtype: dict[torch.dtype, list[str]] = {}
    for k in keys:
        by_dtype.setdefault(state[k].dtype, []).append(k)
    out: dict[str, torch.Tensor] = {}
    nxt, prev = (info.rank + 1) % info.world_size, (info.rank - 1) % info.world_size
    for dtype, names in by_dtype.items():
        send = torch.cat([state[k].detach().reshape(-1) for k in names])
        recv = torch.empty_like(send)
        ops = [dist.P2POp(dist.isend, send, nxt), dist.P2POp(dist.irecv, recv, prev)]
        for req in dist.batch_isend_irecv(ops):
            req.wait()
        offset = 0
        for k in names:
            n = state[k].numel()
            out[k] = recv[offset:offset + n].view_as(state[k]).clone()
            offset += n
    return {k: out[k] for k in keys}


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
