"""A run's state: surgery (applied, recorded, replayed) and checkpoints (saved, loaded).

:class:`Checkpointer` is a collaborator the loop (:class:`~resprout.engine.trainer.Trainer`) owns: it reads the
loop's members and position and writes nothing the loop does not hand it.

Checkpoints hold the whole position (generation, epoch, step), every member's weights and optimizer, the surgery
history, method states, global RNG states and the metrics so far. Data order and augmentation are functions of the
position (see :mod:`resprout.data.loader`), so a run resumed from any checkpoint ends with exactly the weights and
metrics of a run that was never stopped (same device, same thread count).

In a run with per-rank members, every rank's members, RNG state and epoch sums are **gathered to rank 0**, which
writes one checkpoint file; on resume every rank reads that file and takes its own part.

A test hook, :class:`Fault`, stops the process at an exact point (``RESPROUT_FAULT``), so that kill-and-resume
tests choose where a run dies instead of racing its clock.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resprout.engine import checkpoint as ckpt
from resprout.engine.distributed import all_gather_object
from resprout.engine.events import Event
from resprout.errors import CheckpointError, ConfigError
from resprout.seeding import rng_state, set_rng_state
from resprout.surgery.registry import IndexMaps, SurgeryResult, get_surgery

from resprout.engine.rundir import CHECKPOINT_NAME  # noqa: F401  (one name for the file: SavedRun reads it)
FAULT_ENV = "RESPROUT_FAULT"


class Fault:
    """A deterministic fault for tests: ``RESPROUT_FAULT=<action>-after-<moment>:N``.

    The process sends itself a signal right after the N-th ``checkpoint`` it writes is on disk (the writer is
    waited for), or right after the N-th training ``step`` it takes; both counted from the start of this process's
    run, so a resumed process counts afresh. Actions: ``kill`` (SIGKILL: dies on the spot), ``interrupt`` (SIGINT:
    the trainer's Ctrl-C path, a checkpoint at that step and exit 130), ``pause`` (SIGSTOP: stopped, holding the
    run's lock, until SIGCONT). Read once, when the trainer is built; a malformed value is refused.
    """

    SIGNALS = {"kill": signal.SIGKILL, "interrupt": signal.SIGINT, "pause": signal.SIGSTOP}
    MOMENTS = ("checkpoint", "step")

    def __init__(self, spec: str) -> None:
        m = re.fullmatch(r"([a-z]+)-after-([a-z]+):([0-9]+)", spec.strip())
        if not m or m[1] not in self.SIGNALS or m[2] not in self.MOMENTS or int(m[3]) < 1:
            raise ConfigError(f"{FAULT_ENV}={spec!r} is not a fault; expected <action>-after-<moment>:N with action "
                              f"{'/'.join(self.SIGNALS)}, moment {'/'.join(self.MOMENTS)} and N >= 1 "
                              f"(e.g. kill-after-checkpoint:2), or unset")
        self.signal, self.moment, self.n = self.SIGNALS[m[1]], m[2], int(m[3])
        self.count = 0

    @classmethod
    def from_env(cls) -> Fault | None:
        spec = os.environ.get(FAULT_ENV)
        return cls(spec) if spec else None

    def reached(self, moment: str) -> bool:
        """Count one ``moment``; True exactly at the N-th."""
        if moment != self.moment:
            return False
        self.count += 1
        return self.count == self.n


def carry_tensor(old: torch.Tensor, maps: dict[int, list[int]], shape: torch.Size) -> torch.Tensor:
    """``old`` indexed into ``shape`` along the mapped dims; new indices (``-1``) are zero."""
    out = old
    for dim, index in sorted(maps.items()):
        idx = torch.tensor(index, dtype=torch.long, device=old.device)
        keep = idx >= 0
        picked = out.index_select(dim, idx.clamp(min=0))
        mask_shape = [1] * out.dim()
        mask_shape[dim] = len(index)
        out = picked * keep.view(mask_shape).to(picked.dtype)
    if out.shape != shape:
        raise CheckpointError(f"surgery index map gives shape {tuple(out.shape)}, the new tensor has {tuple(shape)}")
    return out


def carry_optimizer_state(old_state: dict[str, dict], new_model: nn.Module, optimizer: torch.optim.Optimizer,
                          index_maps: IndexMaps) -> None:
    """Carry per-parameter optimizer state (momentum, Adam moments) over a surgery: kept channels keep theirs, new
    channels start at zero. ``old_state`` maps parameter names of the old model to their optimizer state."""
    for name, p in new_model.named_parameters():
        if name not in old_state:
            continue
        maps = index_maps.get(name, {})
        carried = {}
        for key, value in old_state[name].items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape and not maps:
                carried[key] = value.clone()
            elif isinstance(value, torch.Tensor) and value.dim() > 0:
                carried[key] = carry_tensor(value, maps, p.shape)
            else:  # scalars: Adam's step count
                carried[key] = value.clone() if isinstance(value, torch.Tensor) else value
        optimizer.state[p] = carried


class Checkpointer:
    """Surgery and checkpoints of a run: a collaborator the loop owns (``trainer.checkpointer``)."""

    def __init__(self, loop) -> None:
        self.loop = loop  # the trainer whose surgery and checkpoints this collaborator handles

    # -- surgery ----------------------------------------------------------------------------------------------------
    def apply_surgery(self, name: str, op: str, **args: Any) -> nn.Module:
        """Change a member's shapes with the registered operation ``op``; recorded so a resume can replay it.

        Inside a generation the member's optimizer is rebuilt for the new parameters, and its state (momentum,
        Adam moments) is carried through the operation's index map: kept channels keep theirs, new ones start at
        zero. The distributed wrapper and feature taps are renewed, and ``on_member_resized`` tells the methods.

        Called from a method's ``setup`` (a new head, say), the operation is recorded like any other, so that a
        network rebuilt from its weights file (:meth:`~resprout.engine.rundir.SavedRun.model`) has it too; no event
        is sent (the methods are still being set up), and a resume, whose setup applies it again, does not replay
        it from the checkpoint.
        """
        loop = self.loop
        member = loop.members[name]
        old_state = {}
        if member.optimizer is not None and loop.started:
            params = dict(member.model.named_parameters())
            by_id = {id(p): n for n, p in params.items()}
            old_state = {by_id[id(p)]: s for p, s in member.optimizer.state.items() if id(p) in by_id}
        result = self._run_surgery(name, op, args)
        loop.surgery.append({"member": name, "op": op, "args": args, "generation": loop.generation,
                             "epoch": loop.epoch, "step": loop.step})
        if member.trainable and member.local and loop.started:
            loop.rebuild_optimizer(name)
            carry_optimizer_state(old_state, member.model, member.optimizer, result.index_maps)
        # methods that keep per-weight tensors (pruning masks) carry them through the same index map
        loop.resized_maps = result.index_maps
        try:
            self._member_resized(name, replay=False)
        finally:
            loop.resized_maps = None
        return member.model

    def _run_surgery(self, name: str, op: str, args: dict) -> SurgeryResult:
        loop = self.loop
        member = loop.members[name]
        out = get_surgery(op)(member.model, **args)
        result = out if isinstance(out, SurgeryResult) else SurgeryResult(out)
        member.model = loop._place(result.model)
        if not member.trainable:
            loop._freeze(member.model)
        loop._wrap(member)
        return result

    def _member_resized(self, name: str, *, replay: bool) -> None:
        loop = self.loop
        if loop.setting_up:  # inside the methods' setup: later methods see the new network when set up
            if loop.taps.active:
                loop.taps.attach(name, loop.members[name].model)
            return
        loop.resized, loop.replaying = name, replay
        try:
            if loop.taps.active:
                loop.taps.attach(name, loop.members[name].model)
            loop._emit(Event.MEMBER_RESIZED)
        finally:
            loop.resized, loop.replaying = None, False

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def weights_record(self, name: str) -> dict:
        loop = self.loop
        return {"format": ckpt.WEIGHTS_FORMAT, "version": ckpt.VERSION, "member": name,
                "generation": loop.generation + 1, "epoch": loop.epoch + 1,
                "config": loop.config.to_dict(),
                "surgery": [r for r in loop.surgery if r["member"] == name],
                "model": loop.members[name].model.state_dict()}

    def _local_state(self) -> dict:
        loop = self.loop
        return {"members": {name: {"model": m.model.state_dict(),
                                   "optimizer": m.optimizer.state_dict() if (m.optimizer and loop.started) else None}
                            for name, m in loop.members.items() if m.local},
                "methods": {m.name: m.state_dict() for m in loop.methods},
                "rng": rng_state(),
                "accum": dict(loop._accum),
                "scaler": loop.scaler.state_dict() if loop.scaler is not None else None}

    def state_dict(self) -> dict:
        loop = self.loop
        local = self._local_state()
        state = {
            "format": ckpt.FORMAT,
            "version": ckpt.VERSION,
            "fingerprint": loop.config.fingerprint(),
            "config": loop.config.to_dict(),
            "run_id": loop.run_id,
            "position": {"generation": loop.generation, "epoch": loop.epoch, "step": loop.step,
                         "started": loop.started, "finished": loop.finished},
            "members": local["members"],
            "surgery": list(loop.surgery),
            "methods": local["methods"],
            "rng": local["rng"],
            "accum": local["accum"],
            "scaler": local["scaler"],
            "epoch_time": loop._epoch_time,
            "results": loop.results,
        }
        if loop.per_rank:  # gathered to rank 0: one file holds every rank's part
            parts = all_gather_object(ckpt.snapshot(local), loop.dist)
            state["members"] = {k: v for part in parts for k, v in part["members"].items()}
            state["ranks"] = [{k: part[k] for k in ("methods", "rng", "accum", "scaler")} for part in parts]
        return state

    def save_checkpoint(self) -> None:
        """Queue a snapshot of the run for writing (rank 0 writes; a no-op without a run directory). With
        per-rank members every rank must call it at the same point (it gathers)."""
        loop = self.loop
        if loop.run_dir is None or (loop._writer is None and not loop.per_rank):
            return
        state = self.state_dict()
        if loop._writer is not None:
            loop._writer.save(state, loop.run_dir / CHECKPOINT_NAME)
            self.fault_point("checkpoint")
        loop._last_checkpoint = time.monotonic()

    def fault_point(self, moment: str) -> None:
        """Where a :class:`Fault` may strike (a checkpoint written, a step taken); nothing without one."""
        loop = self.loop
        if loop._fault is None or not loop._fault.reached(moment):
            return
        if loop._writer is not None:  # what was queued is on disk before the signal
            loop._writer.wait()
        os.kill(os.getpid(), loop._fault.signal)

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from a checkpoint written by a run with the same configuration."""
        loop = self.loop
        state = ckpt.load_file(path)
        if state["fingerprint"] != loop.config.fingerprint():
            raise CheckpointError(f"{path} was written by a run with another configuration; nothing was changed")
        names = set(state["members"])
        # the methods' setup applied its surgery again; the checkpoint's history must start with it, and the rest is
        # replayed on the freshly built members so that shapes match, then weights are loaded
        setup = [(r["member"], r["op"], r["args"]) for r in loop.surgery]
        if [(r["member"], r["op"], r["args"]) for r in state["surgery"][:len(setup)]] != setup:
            ops = ", ".join(f"{m}: {op}" for m, op, _ in setup) or "none"
            raise CheckpointError(f"{path}: its surgery history does not start with the surgery of this run's setup "
                                  f"({ops}); it was written by another version of the methods; nothing was changed")
        for rec in state["surgery"][len(setup):]:
            if rec["member"] not in loop.members:
                raise CheckpointError(f"{path}: surgery on unknown member {rec['member']!r}")
            self._run_surgery(rec["member"], rec["op"], rec["args"])
            self._member_resized(rec["member"], replay=True)
        loop.surgery = list(state["surgery"])
        if names != set(loop.members):
            raise CheckpointError(f"{path} holds members {sorted(names)}, this run has {sorted(loop.members)}")
        part = state["ranks"][loop.dist.rank] if "ranks" in state else state
        if "ranks" in state and len(state["ranks"]) != loop.dist.world_size:
            raise CheckpointError(f"{path} was written by {len(state['ranks'])} processes, this run has "
                                  f"{loop.dist.world_size}; per-rank members need the same number")
        pos = state["position"]
        loop.generation, loop.epoch, loop.step = pos["generation"], pos["epoch"], pos["step"]
        loop.started, loop.finished = pos["started"], pos["finished"]
        for name, m in loop.members.items():
            if not m.local:
                continue
            try:
                m.model.load_state_dict(state["members"][name]["model"])
            except RuntimeError as e:
                why = ckpt.weights_mismatch(m.model, state["members"][name]["model"]) or str(e).splitlines()[0]
                raise CheckpointError(f"{path}: weights of {name!r} do not fit the model: {why}; nothing was "
                                      f"changed") from None
            if loop.started and m.trainable:
                loop.rebuild_optimizer(name)
                m.optimizer.load_state_dict(state["members"][name]["optimizer"])
        for method in loop.methods:
            method.load_state_dict(part["methods"].get(method.name, {}))
        loop._accum = {k: (v.to(loop.device) if isinstance(v, torch.Tensor) else v)
                       for k, v in part["accum"].items()}
        if loop.scaler is not None and part.get("scaler"):  # fp16: the loss scale and its growth tracker
            loop.scaler.load_state_dict(part["scaler"])
        loop._epoch_time = state["epoch_time"]
        loop.results = state["results"]
        set_rng_state(part["rng"])
        if loop.store is not None:
            loop.store.forget_after(loop.run_id, loop.generation, loop.epoch)
