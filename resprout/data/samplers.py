"""Batch samplers: which training images form each batch of an epoch.

A sampler turns the labels of a split and a seeded generator into the list of index batches of one epoch. The
plan is a pure function of (labels, generator seed), so a resumed run rebuilds exactly the same epoch.

* ``random``: a seeded permutation cut into batches (plain training).
* ``pk``: P classes x K images per batch (triplet losses with in-batch mining; Schroff et al. 2015, KE paper Sec. 4.2).
* ``class_pair``: B anchors followed by B same-class partners, partner ``i`` for anchor ``i``
  (CS-KD, Yun et al. CVPR 2020, Sec. 3): a batch of ``2B`` indices whose halves line up by class.
"""

from __future__ import annotations

from typing import Callable

import torch

from resprout.errors import ConfigError

Sampler = Callable[[torch.Tensor, int, torch.Generator], list[torch.Tensor]]


def random_batches(labels: torch.Tensor, batch_size: int, g: torch.Generator, *, drop_last: bool = False
                   ) -> list[torch.Tensor]:
    """A seeded permutation of all indices in batches of ``batch_size`` (the last one smaller unless dropped)."""
    perm = torch.randperm(len(labels), generator=g)
    batches = list(perm.split(batch_size))
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def _class_indices(labels: torch.Tensor) -> list[torch.Tensor]:
    labels = labels.cpu()
    return [torch.nonzero(labels == c).flatten() for c in range(int(labels.max()) + 1)]


def pk_batches(labels: torch.Tensor, p: int, k: int, g: torch.Generator) -> list[torch.Tensor]:
    """Batches of ``p`` distinct classes with ``k`` images each.

    Classes are visited in reshuffled rounds and each class's images in reshuffled order, so over an epoch
    (``len(labels) // (p*k)`` batches) every image is used about once. A class with fewer than ``k`` images
    repeats some of them within the batch.
    """
    by_class = [idx for idx in _class_indices(labels) if len(idx) > 0]
    if p > len(by_class):
        raise ConfigError(f"pk sampler: p={p} classes per batch but the data has only {len(by_class)} classes")
    queues: list[list[int]] = [[] for _ in by_class]

    def take(c: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            q = queues[c]
            if len(q) < k - len(out):
                # leftovers first, then a fresh order without them: no repeats unless the class is smaller than k
                left = set(q)
                fresh = [i for i in by_class[c][torch.randperm(len(by_class[c]), generator=g)].tolist()
                         if i not in left]
                queues[c] = q = fresh + q
            out.append(q.pop())
        return out

    n_batches = max(1, len(labels) // (p * k))
    class_order: list[int] = []
    batches = []
    for _ in range(n_batches):
        chosen: list[int] = []
        while len(chosen) < p:
            if not class_order:
                class_order = torch.randperm(len(by_class), generator=g).tolist()
            c = class_order.pop()
            if c not in chosen:
                chosen.append(c)
        batches.append(torch.tensor([i for c in chosen for i in take(c)], dtype=torch.long))
    return batches


def class_pair_batches(labels: torch.Tensor, batch_size: int, g: torch.Generator, *, drop_last: bool = False
                       ) -> list[torch.Tensor]:
    """Batches of ``batch_size`` anchors followed by one same-class partner per anchor (``2 x batch_size`` indices).

    The partner is another image of the anchor's class when the class has one, else the anchor itself.
    """
    labels_cpu = labels.cpu()
    by_class = _class_indices(labels_cpu)
    anchors = random_batches(labels_cpu, batch_size, g, drop_last=drop_last)
    batches = []
    for a in anchors:
        partners = torch.empty_like(a)
        cls = labels_cpu[a]
        for c in cls.unique().tolist():
            pos = torch.nonzero(cls == c).flatten()
            pool = by_class[c]
            if len(pool) == 1:
                partners[pos] = a[pos]
                continue
            # draw from the class minus the anchor: an index into pool of size n-1, shifted past the anchor's slot
            draw = torch.randint(0, len(pool) - 1, (len(pos),), generator=g)
            anchor_slot = torch.searchsorted(pool, a[pos])
            draw = draw + (draw >= anchor_slot).long()
            partners[pos] = pool[draw]
        batches.append(torch.cat([a, partners]))
    return batches


SAMPLERS = ("random", "pk", "class_pair")


def make_sampler(name: str, **options) -> Sampler:
    """The sampler called ``name``; ``pk`` takes ``k`` (images per class; ``p = batch_size // k``)."""
    if name == "random":
        return lambda labels, bs, g: random_batches(labels, bs, g)
    if name == "class_pair":
        def pairs(labels: torch.Tensor, bs: int, g: torch.Generator) -> list[torch.Tensor]:
            return class_pair_batches(labels, bs, g)

        pairs.paired = True  # batches are [anchors | partners]: shard the halves alike
        return pairs
    if name == "pk":
        k = int(options.get("k", 4))

        def pk(labels: torch.Tensor, bs: int, g: torch.Generator) -> list[torch.Tensor]:
            if bs % k or bs // k < 2:
                raise ConfigError(f"pk sampler: batch_size={bs} must be a multiple of k={k} with at least 2 classes")
            return pk_batches(labels, bs // k, k, g)

        return pk
    raise ConfigError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
