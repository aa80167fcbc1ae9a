"""The detection set a run trains on: :class:`DetectionData` (a train and a test :class:`DetectionDataset`) and its
loaders, :class:`DetectionTrainLoader` and :class:`DetectionEvalLoader`.

A batch is two lists, as torchvision's detectors take them: images (float (3, H, W) in [0, 1], each at its own
size) and targets (``{"boxes": (K, 4) float32, "labels": (K,) int64}`` with labels + 1, label 0 being their
background; :meth:`DetectionDataset.target`). Grayscale images are repeated to three channels (the detectors
normalize with ImageNet's three-channel mean and std themselves); no other normalization is applied here.

The order of an epoch is a pure function of (seed, generation, epoch) and the flips of a step of (seed, generation,
epoch, step), as for :class:`resprout.data.loader.TrainLoader`, so a resumed run sees exactly the batches an
uninterrupted one would have seen. The only augmentation is the horizontal flip (``augment=flip``; boxes flipped
with their image): a crop would have to cut boxes, which the detection recipes this follows do not do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from resprout.data.detection.dataset import DetectionDataset
from resprout.seeding import generator

__all__ = ["AUGMENTS", "DetectionData", "DetectionEvalLoader", "DetectionTrainLoader", "detector_image"]

_ORDER, _AUGMENT = 0, 1  # the stream tags of resprout.data.loader: order and augmentation draw apart
AUGMENTS = ("none", "flip")


@dataclass(repr=False, eq=False)
class DetectionData:
    """A run's detection set: ``train`` and ``test`` splits with the same ``classes`` (no validation split: the best
    epoch is chosen on test, as for every set without one)."""

    name: str
    train: DetectionDataset
    test: DetectionDataset
    val: ClassVar[None] = None

    def __post_init__(self) -> None:
        if self.train.classes != self.test.classes:
            raise ValueError(f"detection set {self.name!r}: train and test name other classes "
                             f"({self.train.classes} vs {self.test.classes})")

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        """The object classes, without the detectors' background class."""
        return self.train.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(3, H, W) of the first train image (the images of a detection set may differ in size)."""
        h, w = self.train.images[0].shape[1:]
        return 3, int(h), int(w)

    def __repr__(self) -> str:
        return (f"DetectionData({self.name!r}: train {len(self.train)} images / {self.train.num_objects} objects, "
                f"test {len(self.test)} / {self.test.num_objects}, {self.num_classes} classes)")


def detector_image(image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A uint8 (C, H, W) image as a detector takes it: float32 (3, H, W) in [0, 1] on ``device``."""
    x = image.to(device).float().div_(255)
    return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


class DetectionTrainLoader:
    """Seeded, resumable batches of ``(images, targets)`` lists from a :class:`DetectionDataset`."""

    def __init__(self, dataset: DetectionDataset, *, batch_size: int, seed: int, augment: str = "none",
                 device: torch.device | str = "cpu") -> None:
        if augment not in AUGMENTS:
            raise ValueError(f"detection augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.flip = augment == "flip"
        self.device = torch.device(device)
        self.normalize = None  # the detectors normalize their inputs themselves

    def plan(self, generation: int, epoch: int) -> list[torch.Tensor]:
        order = torch.randperm(len(self.dataset), generator=generator(self.seed, _ORDER, generation, epoch))
        return list(order.split(self.batch_size))

    def steps(self, generation: int, epoch: int) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __len__(self) -> int:
        return self.steps(0, 0)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w = self.dataset.images[0].shape[1:]
        return 3, int(h), int(w)

    def stream(self, seed: int) -> DetectionTrainLoader:
        return DetectionTrainLoader(self.dataset, batch_size=self.batch_size, seed=seed,
                                    augment="flip" if self.flip else "none", device=self.device)

    def batch(self, generation: int, epoch: int, step: int) -> tuple[list[torch.Tensor], list[dict]]:
        """Batch ``step`` of the epoch: images and targets, each image flipped with probability 1/2 under
        ``augment=flip`` (its boxes with it)."""
        idx = self.plan(generation, epoch)[step].tolist()
        flips = torch.rand(len(idx), generator=generator(self.seed, _AUGMENT, generation, epoch, step)) < 0.5 \
            if self.flip else torch.zeros(len(idx), dtype=torch.bool)
        images, targets = [], []
        for i, flip in zip(idx, flips.tolist(), strict=True):
            x = detector_image(self.dataset.images[i], self.device)
            t = self.dataset.target(i)
            boxes = t["boxes"]
            if flip:
                w = x.shape[2]
                x = x.flip(2)
                boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
            images.append(x)
            targets.append({"boxes": boxes.to(self.device), "labels": t["labels"].to(self.device)})
        return images, targets

    def batches(self, generation: int, epoch: int, start: int = 0) -> Iterator[tuple[list, list]]:
        for step in range(start, self.steps(generation, epoch)):
            yield self.batch(generation, epoch, step)


class DetectionEvalLoader:
    """The ordered batches of an evaluation split (``dataset``, kept for the mAP), in one process."""

    def __init__(self, dataset: DetectionDataset, *, batch_size: int, device: torch.device | str = "cpu") -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.total = len(dataset)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], list[dict]]]:
        for start in range(0, len(self.dataset), self.batch_size):
            idx = range(start, min(start + self.batch_size, len(self.dataset)))
            yield [detector_image(self.dataset.images[i], self.device) for i in idx], \
                [self.dataset.target(i) for i in idx]
