"""In-memory batch loading for small datasets.

The whole split sits on the training device as uint8 tensors. A batch is one gather, one conversion to float,
the batched augmentation and a fused normalization: no worker processes, no per-image Python. The order of an
epoch is a pure function of (seed, generation, epoch), and the augmentation of a step a pure function of
(seed, generation, epoch, step), so :meth:`TrainLoader.batches` can start at any step and reproduce exactly what
an uninterrupted run would have seen there.

Under ``torch.distributed`` every process builds the same global batch and keeps its own contiguous share, so
the global batch size and the data order do not depend on the number of processes.
"""

from __future__ import annotations

import copy

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from resprout.data.augment import random_crop, random_flip
from resprout.data.samplers import Sampler, make_sampler
from resprout.seeding import generator

# stream tags passed to derive_seed, so that order and augmentation draw from unrelated streams
_ORDER, _AUGMENT = 0, 1


@dataclass
class Normalizer:
    """``(x/255 - mean) / std`` per channel, as one multiply-add."""

    scale: torch.Tensor  # (1, C, 1, 1)
    shift: torch.Tensor  # (1, C, 1, 1)

    @classmethod
    def from_stats(cls, mean: list[float], std: list[float], device: torch.device) -> Normalizer:
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).clamp_min(1e-6).view(1, -1, 1, 1)
        return cls(scale=1.0 / (255.0 * s), shift=-m / s)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x, self.scale)


def _shard(idx: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    if world_size == 1:
        return idx
    return idx.tensor_split(world_size)[rank]


class TrainLoader:
    """Seeded, resumable, augmented training batches from an in-memory split."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, normalizer: Normalizer,
                 seed: int, augment: str = "none", crop_padding: int = 0, sampler: Sampler | None = None,
                 device: torch.device | str = "cpu", channels_last: bool = False, rank: int = 0,
                 world_size: int = 1) -> None:
        if images.dtype != torch.uint8:
            raise TypeError("TrainLoader expects uint8 images")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self._labels_cpu = labels.cpu()
        self.batch_size = batch_size
        self.normalize = normalizer
        self.seed = seed
        self.crop_padding = crop_padding if "crop" in augment else 0
        self.flip = "flip" in augment
        self.sampler = sampler or make_sampler("random")
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self._plan_key: tuple[int, int] | None = None
        self._plan: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.plan(0, 0))

    def stream(self, seed: int) -> TrainLoader:
        """The same data with its own order and augmentation (``seed``), yielding whole batches on every process
        (a member that lives on one rank, or has a data order of its own)."""
        out = copy.copy(self)
        out.seed, out.rank, out.world_size = seed, 0, 1
        out._plan_key, out._plan = None, []
        return out

    def plan(self, generation: int, epoch: int) -> list[torch.Tensor]:
        """The global index batches of one epoch (cached for the current epoch)."""
        key = (generation, epoch)
        if key != self._plan_key:
            g = generator(self.seed, _ORDER, generation, epoch)
            plan = self.sampler(self._labels_cpu, self.batch_size, g)
            if self.world_size > 1:  # every process needs a non-empty share of every batch
                plan = [b for b in plan if len(b) >= self.world_size]
            self._plan, self._plan_key = plan, key
        return self._plan

    def steps(self, generation: int, epoch: int) -> int:
        return len(self.plan(generation, epoch))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images of a batch."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def positions(self, n: int) -> torch.Tensor:
        """The positions of a global batch of ``n`` indices that this process takes."""
        pos = torch.arange(n)
        if getattr(self.sampler, "paired", False) and self.world_size > 1:
            anchors, partners = pos.chunk(2)
            return torch.cat([_shard(anchors, self.rank, self.world_size),
                              _shard(partners, self.rank, self.world_size)])
        return _shard(pos, self.rank, self.world_size)

    def batch(self, generation: int, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of batch ``step`` of the epoch, augmented and normalized."""
        idx = self.plan(generation, epoch)[step]
        idx = idx[self.positions(len(idx))].to(self.device)
        x = self.images.index_select(0, idx).float()
        if self.crop_padding or self.flip:
            g = generator(self.seed, _AUGMENT, generation, epoch, step)
            if self.crop_padding:
                x = random_crop(x, self.crop_padding, g)
            if self.flip:
                x = random_flip(x, g)
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels.index_select(0, idx)

    def batches(self, generation: int, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(start, self.steps(generation, epoch)):
            yield self.batch(generation, epoch, step)


class EvalLoader:
    """Plain, ordered batches of an evaluation split; under distributed runs each process takes a contiguous part."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, normalizer: Normalizer,
                 device: torch.device | str = "cpu", channels_last: bool = False, rank: int = 0,
                 world_size: int = 1) -> None:
        self.device = torch.device(device)
        part = _shard(torch.arange(len(labels)), rank, world_size)
        self.images = images[part].to(self.device)
        self.labels = labels[part].to(self.device)
        self.batch_size = batch_size
        self.normalize = normalizer
        self.channels_last = channels_last
        self.total = len(labels)  # over all processes

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.labels), self.batch_size):
            x = self.normalize(self.images[start:start + self.batch_size].float())
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[start:start + self.batch_size]
