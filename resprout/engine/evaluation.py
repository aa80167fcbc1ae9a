"""Evaluation and epoch reporting: metrics of a batch and a split, train metrics accumulated over an epoch, the
epoch line, the store rows (and their copies in the dashboard logs) and the best weights.

Evaluation runs under ``torch.inference_mode`` on batches of ``eval_batch_size`` in the run's memory layout (the
eval loader converts to channels-last when the run trains so) and under the run's autocast (bf16/fp16; metrics
are computed in fp32). Its cadence is ``eval_every``; by default
(``eval_every`` unset) a run evaluates every ``ceil(evaluated images / training images per epoch)`` epochs, so that
a test split much larger than a small training set (Fashion-MNIST's 10,000 test images against 1,000 training
images) is not evaluated after every epoch; see :func:`auto_eval_every`. The last epoch of every generation is
always evaluated.

At that last evaluation the per-image top-1 correctness of every classification member on the test split is kept
in the run directory (``test-correct-<member>.json``, one packed bitmask per generation, see
:func:`correctness_record`): two runs evaluated on the same test images can then be compared image by image (the
exact, McNemar-style variance of a paired difference; ``benchmarks.reproduce`` uses it).

:class:`Reporter` is a collaborator the loop (:class:`~resprout.engine.trainer.Trainer`) owns; it reads the
loop's members, loaders, store and position.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from resprout.data.loader import EvalLoader
from resprout.engine.distributed import DistInfo, all_gather_object, all_reduce_sum
from resprout.engine.events import Event
from resprout.engine.precision import describe
from resprout.errors import NoSpaceError

SKIPPED = "scaler/skipped_steps"  # the epoch's count of steps fp16's gradient scaler skipped (in the epoch sums)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[summed cross-entropy, top-1 correct, top-5 correct, count] of a batch, as one tensor."""
    loss = F.cross_entropy(logits, targets, reduction="sum")
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    hits = topk == targets[:, None]
    return torch.stack([loss, hits[:, 0].sum().to(loss.dtype), hits.any(1).sum().to(loss.dtype),
                        torch.tensor(float(len(targets)), device=loss.device)])


def auto_eval_every(eval_images: int, train_images: int) -> int:
    """The default cadence: evaluate every ``ceil(eval_images / train_images)`` epochs (at least 1).

    A forward pass costs about a third of a training step per image, so evaluating ``eval_images`` every N epochs
    of ``train_images`` each keeps evaluation near or below a quarter of the run's time (measured in
    ``benchmarks/evaluation.py``); when the split is no larger than the training set, every epoch is evaluated."""
    return max(1, math.ceil(eval_images / max(train_images, 1)))


@torch.inference_mode()
def evaluate(model: nn.Module, loader: EvalLoader, dist: DistInfo | None = None,
             correct: list | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (fractions) of ``model`` on ``loader``, over all processes (under
    ``torch.inference_mode``: no autograd bookkeeping, as cheap as a forward pass can be). ``correct``: a list that
    receives this process's per-image top-1 correctness, one bool tensor per batch, in the loader's order."""
    was_training = model.training
    model.eval()
    sums = None
    try:
        for x, y in loader:
            logits = model(x).float()
            batch = classification_metrics(logits, y)
            if correct is not None:
                correct.append((logits.argmax(1) == y).cpu())
            sums = batch if sums is None else sums + batch
    finally:
        model.train(was_training)
    if sums is None:
        sums = torch.zeros(4, device=loader.device)
    sums = all_reduce_sum(sums.double(), dist or DistInfo()).tolist()
    n = max(sums[3], 1.0)
    return {"loss": sums[0] / n, "top1": sums[1] / n, "top5": sums[2] / n}


CORRECT_FILE = "test-correct-{member}.json"


def labels_digest(labels: torch.Tensor) -> str:
    """A fingerprint of a split's labels in order: two bitmasks are paired only when it is the same."""
    return hashlib.sha256(labels.to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:16]


def pack_bits(correct: torch.Tensor) -> str:
    """Per-image booleans as base64 of their bits, most significant first (numpy.packbits' order)."""
    import numpy as np

    return base64.b64encode(np.packbits(correct.cpu().numpy().astype(bool)).tobytes()).decode()


def unpack_bits(text: str, count: int):
    """The booleans :func:`pack_bits` packed (a numpy array of ``count`` bools)."""
    import numpy as np

    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=count).astype(bool)


def correctness_record(previous: dict | None, member: str, generation: int, correct: torch.Tensor,
                       labels: torch.Tensor) -> dict:
    """The content of ``test-correct-<member>.json`` after ``generation`` (from 1): the test split's size and labels
    fingerprint and one packed bitmask per generation; the entries of later generations (a run resumed from an
    earlier point) are dropped, as they will be written again."""
    digest = labels_digest(labels)
    gens = dict((previous or {}).get("generations", {})) if (previous or {}).get("labels") == digest else {}
    gens = {g: v for g, v in gens.items() if int(g) < generation}
    gens[str(generation)] = pack_bits(correct)
    return {"member": member, "split": "test", "images": int(len(labels)), "labels": digest, "generations": gens}


def format_metrics(train: dict, evals: dict[str, dict]) -> str:
    text = ""
    if "loss" in train:
        text += f" train loss {train['loss']:.4f}"
    if "top1" in train:
        text += f" top1 {100 * train['top1']:.2f}"
    for split, m in evals.items():
        text += f" | {split}" + (f" loss {m['loss']:.4f}" if "loss" in m else "") + f" top1 {100 * m['top1']:.2f}"
        for key in ("top5", "nmi", "rank5", "map"):
            if key in m:
                text += f" {key} {100 * m[key]:.2f}"
    return text


class Reporter:
    """Evaluation, train metrics and the end of an epoch: a collaborator the loop owns (``trainer.reporter``)."""

    def __init__(self, loop) -> None:
        self.loop = loop  # the trainer whose epochs this collaborator evaluates and reports
        self._epoch_lrs: dict[str, float] = {}  # member -> the rate of its last step in the epoch being reported

    def evaluate(self, model: nn.Module, split: str = "test", correct: list | None = None, *,
                 autocast: bool = True) -> dict[str, float]:
        """Metrics of ``model`` on a split, as the run's task (:mod:`resprout.engine.task`) computes them:
        classification by default, retrieval for an embedding network; at least ``top1``. ``correct`` receives the
        per-image top-1 correctness of the whole split (when the task keeps it; else left empty). The forward runs
        under the run's autocast unless ``autocast=False`` (in fp32: a network exported in fp32).

        In a run with per-rank members every rank evaluates its own members on the whole split."""
        loop = self.loop
        task = loop.task
        if not task.keeps_correct:
            correct = None
        loader, dist = (loop.full_eval_loaders[split], DistInfo()) if loop.per_rank else \
            (loop.eval_loaders[split], loop.dist)
        with loop.autocast() if autocast else contextlib.nullcontext():
            metrics = task.evaluate(model, loader, dist, correct)
        if correct and not loop.per_rank and loop.dist.enabled:
            # contiguous shards in rank order: gathered, they are the split's order
            parts = all_gather_object(torch.cat(correct), loop.dist)
            correct[:] = [torch.cat(parts)]
        return metrics

    @property
    def eval_interval(self) -> int:
        """Evaluate every this many epochs: ``eval_every`` when given, else :func:`auto_eval_every` of the run's
        evaluation splits and its training images per epoch."""
        loop = self.loop
        if loop.config.eval_every is not None:
            return loop.config.eval_every
        evaluated = sum(loader.total for loader in loop.eval_loaders.values())
        return auto_eval_every(evaluated, loop.train_loader.steps(0, 0) * loop.train_loader.batch_size)

    def log_step(self, generation: int, epoch: int) -> int:
        """The dashboard logs' step of an epoch: epochs of the whole run, from 1."""
        return generation * self.loop.config.epochs + epoch + 1

    @property
    def selection_split(self) -> str:
        """Where "best" is chosen: validation when the run has it, else test (reported as such)."""
        return "val" if "val" in self.loop.eval_loaders else "test"

    def log_generation(self, member: str, metrics: dict[str, float], *, in_results: bool = True) -> None:
        """Record per-generation metrics of a member in the store, and (unless ``in_results`` is false, for bulky
        per-layer detail) in the run's results."""
        loop = self.loop
        if in_results:
            gens = loop.results["generations"]
            while len(gens) <= loop.generation:
                gens.append({"generation": len(gens) + 1})
            gens[loop.generation].setdefault(member, {}).update({k: float(v) for k, v in metrics.items()})
        if loop.store is not None:
            loop.store.log_generation(loop.run_id, member, loop.generation, metrics)
        if loop.loggers:  # at the step of the generation's last epoch
            loop.loggers.log(self.log_step(loop.generation, loop.config.epochs - 1), member,
                             {f"generation/{k}": v for k, v in metrics.items()})

    # -- train metrics ------------------------------------------------------------------------------------------------
    def _accumulate(self, n: int) -> None:
        loop = self.loop
        acc = loop._accum
        with torch.no_grad():
            for member, name, v in loop._terms:
                key = f"{member}/loss_{name}"
                acc[key] = acc.get(key, 0.0) + v.detach().float() * n
            for name, out in loop.outputs.items():
                targets = loop.targets_of(name)
                if loop.members[name].logits and isinstance(out, torch.Tensor) and out.ndim == 2 \
                        and out.shape[0] == len(targets):
                    hit = (out.argmax(1) == targets).sum()
                    acc[f"{name}/correct"] = acc.get(f"{name}/correct", 0) + hit
                acc[f"{name}/count"] = acc.get(f"{name}/count", 0) + n
            for name in loop._manual_terms:
                acc[f"{name}/count"] = acc.get(f"{name}/count", 0) + n

    def _train_metrics(self, member: str) -> dict[str, float]:
        loop = self.loop
        acc = {k: (float(v) if not isinstance(v, torch.Tensor) else v) for k, v in loop._accum.items()}
        if loop.dist.enabled and acc and not loop.per_rank:
            keys = sorted(acc)
            vec = torch.tensor([float(acc[k]) for k in keys], dtype=torch.float64, device=loop.device)
            acc = dict(zip(keys, all_reduce_sum(vec, loop.dist).tolist()))
        n = float(acc.get(f"{member}/count", 0)) or 1.0
        out: dict[str, float] = {}
        terms = {k.split("/loss_", 1)[1]: float(v) / n for k, v in acc.items() if k.startswith(f"{member}/loss_")}
        if terms:
            out["loss"] = sum(terms.values())
            if len(terms) > 1:
                out.update({f"loss_{k}": v for k, v in terms.items()})
        if f"{member}/correct" in acc:
            out["top1"] = float(acc[f"{member}/correct"]) / n
        return out

    # -- the end of an epoch ---------------------------------------------------------------------------------------------
    def _epoch_rows(self, evaluate_now: bool, images: int) -> dict[str, tuple[dict, dict, dict]]:
        """(train metrics, extra train values, split -> metrics) of every evaluated local member; at a generation's
        last epoch, each member's per-image test correctness is saved (:meth:`_save_correct`)."""
        loop = self.loop
        rows = {}
        last = evaluate_now and loop.epoch + 1 == loop.config.epochs
        for name, member in loop.members.items():
            if not member.evaluate or not member.local:
                continue
            train = self._train_metrics(name) if member.trainable else {}
            t0 = time.perf_counter()
            evals = {}
            for split in loop.eval_loaders if evaluate_now else ():
                correct: list | None = [] if last and split == "test" else None
                evals[split] = self.evaluate(member.model, split, correct)
                if correct:
                    self._save_correct(name, torch.cat(correct))
            loop._eval_time += time.perf_counter() - t0
            lr = self._epoch_lrs.get(name, member.optimizer.param_groups[0]["lr"] if member.trainable else 0.0)
            extra = {"lr": lr, "seconds": loop._epoch_time,
                     "images_per_second": images / max(loop._epoch_time, 1e-9)} if member.trainable else {}
            if member.trainable and loop.scaler is not None:  # steps fp16's gradient scaler skipped (overflow)
                extra["skipped_steps"] = float(loop._accum.get(SKIPPED, 0))
            rows[name] = (train, extra, evals)
        if loop.per_rank:  # rank 0 reports every rank's members
            merged: dict = {}
            for part in all_gather_object(rows, loop.dist):
                merged.update(part)
            rows = {name: merged[name] for name in loop.members if name in merged}
        return rows

    def _save_correct(self, member: str, correct: torch.Tensor) -> None:
        """Write this generation's per-image test correctness of ``member`` into ``test-correct-<member>.json``
        (atomically; by the main process, or by the rank that holds a per-rank member)."""
        loop = self.loop
        writer = loop.members[member].placement == "per_rank" or loop.dist.is_main
        if loop.run_dir is None or not writer:
            return
        path = loop.run_dir / CORRECT_FILE.format(member=member)
        try:
            previous = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            previous = None  # unreadable: written anew
        labels = loop.full_eval_loaders["test"].labels
        text = json.dumps(correctness_record(previous, member, loop.generation + 1, correct, labels))
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # the checkpoint's pattern: a stale one is removed
        try:
            tmp.write_text(text)
            os.replace(tmp, path)  # whole or not at all
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno == errno.ENOSPC:
                raise NoSpaceError(f"no space left on {loop.run_dir} while writing {path.name}") from None
            raise

    def _finish_epoch(self) -> None:
        loop = self.loop
        # the rate of each member's last step, read before on_epoch_end: a surgery there gives a fresh optimizer
        self._epoch_lrs = {m.name: m.optimizer.param_groups[0]["lr"] for m in loop.trainable
                           if m.local and m.optimizer is not None}
        loop._emit(Event.EPOCH_END)
        g, e = loop.generation, loop.epoch
        lr = next(iter(self._epoch_lrs.values()), 0.0)
        images = loop.train_loader.steps(g, e) * loop.train_loader.batch_size
        every = self.eval_interval
        evaluate_now = (e + 1) % every == 0 or e + 1 == loop.config.epochs
        loop.last_eval = {}
        loop._eval_time = 0.0
        parts = [f"gen {g + 1}/{loop.config.generations} ep {e + 1}/{loop.config.epochs}"]
        rows = self._epoch_rows(evaluate_now, images)
        step = self.log_step(g, e)
        for name, (train, extra, evals) in rows.items():
            if evals:
                loop.last_eval[name] = evals
                loop.results["final"][name] = dict(evals.get("test", {}))
            if loop.store is not None:
                loop.store.log_epoch(loop.run_id, name, g, e, "train", {**train, **extra})
                for split, metrics in evals.items():
                    loop.store.log_epoch(loop.run_id, name, g, e, split, metrics)
            if loop.loggers:
                loop.loggers.log(step, name, {**{f"train/{k}": v for k, v in {**train, **extra}.items()},
                                              **{f"{split}/{k}": v for split, m in evals.items() for k, v in m.items()}})
            self._update_best(name, evals)
            parts.append(f"{name}:" + format_metrics(train, evals))
        parts.append(f"lr {lr:.4g} | train {loop._epoch_time:.1f}s, " + self._eval_text(evaluate_now and bool(rows),
                                                                                        every))
        line = "  ".join(parts)
        loop.progress.end_epoch(line)
        self._log_line(line)
        if loop.last_eval:
            loop._emit(Event.AFTER_EVALUATE)
        loop.epoch += 1
        loop.step = 0
        # the last epoch of a generation is saved by the generation's end, right after it
        if loop.epoch % loop.config.checkpoint_every == 0 and loop.epoch < loop.config.epochs:
            loop.save_checkpoint()

    def _eval_text(self, evaluated: bool, every: int) -> str:
        """What the epoch evaluated and how long it took, the run's thread count and how it computes."""
        loop = self.loop
        threads = torch.get_num_threads()
        tail = f" | {threads} thread{'s' if threads > 1 else ''}, " + describe(loop.precision, loop.channels_last,
                                                                                loop.compiled)
        if not evaluated:
            return f"not evaluated (every {every} epochs and the last){tail}"
        what = ", ".join(f"{split} {loader.total:,}" for split, loader in loop.eval_loaders.items())
        return f"eval {loop._eval_time:.1f}s ({what} images){tail}"

    def _update_best(self, name: str, evals: dict[str, dict]) -> None:
        loop = self.loop
        split = self.selection_split
        if split not in evals:
            return
        top1 = evals[split]["top1"]
        best = loop.results["best"].get(name)
        if best is None or top1 > best["top1"]:
            loop.results["best"][name] = {**evals[split],
                                          "selected_on": split, "generation": loop.generation + 1,
                                          "epoch": loop.epoch + 1,
                                          **({"test_top1": evals["test"]["top1"]} if split != "test" else {})}
            # the rank that holds the member writes its best weights
            if loop._best_writer is not None and loop.members[name].local:
                loop._best_writer.save(loop.checkpointer.weights_record(name), loop.run_dir / f"best-{name}.pt")

    def _finish_generation(self) -> None:
        loop = self.loop
        for name, member in loop.members.items():
            if member.evaluate and name in loop.results["final"]:
                self.log_generation(name, {f"test_{k}": v for k, v in loop.results["final"][name].items()})
        loop._emit(Event.GENERATION_END)
        self._generation_line()
        loop.generation += 1
        loop.epoch = 0
        loop.step = 0
        loop.started = False
        if loop.generation < loop.config.generations:  # after the last one, fit() saves the finished run
            loop.save_checkpoint()

    def _generation_line(self) -> None:
        """After a generation: its top-1 metrics per member (the dense test accuracy, a method's own such as KE's
        slim network), on the progress display and in train.log."""
        loop = self.loop
        gens = loop.results["generations"]
        if loop.config.generations == 1 or len(gens) <= loop.generation:  # one generation: the epoch line says it
            return
        parts = [f"{name}: " + "  ".join(f"{k} {100 * v:.2f}" for k, v in sorted(metrics.items())
                                          if k.endswith("top1"))
                 for name, metrics in gens[loop.generation].items() if isinstance(metrics, dict)]
        parts = [p for p in parts if not p.endswith(": ")]
        if parts:
            line = f"gen {loop.generation + 1}/{loop.config.generations} done  " + "  ".join(parts)
            loop.progress.message(line)
            self._log_line(line)

    def _log_line(self, line: str) -> None:
        loop = self.loop
        if loop.run_dir and loop.dist.is_main:
            with open(loop.run_dir / "train.log", "a") as fh:
                fh.write(line + "\n")
