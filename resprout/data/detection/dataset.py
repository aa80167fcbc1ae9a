"""The detection data model: :class:`DetectionDataset`, images of any size with their boxes, labels and class names.

Conventions (the same as torchvision's detection models):

* an image is a uint8 tensor (C, H, W); images of one dataset may differ in size;
* a box is ``(x1, y1, x2, y2)`` in continuous pixel coordinates: ``0 <= x1 < x2 <= W`` and ``0 <= y1 < y2 <= H``.
  A box covering the pixel columns ``a..b`` (0-based, inclusive) is ``x1 = a, x2 = b + 1``;
* ``labels[k]`` indexes ``classes``, 0-based. torchvision's detectors keep label 0 for the background, so their
  targets carry ``label + 1`` (:meth:`DetectionDataset.target`, ``label_offset``);
* ``crowd[k]`` marks an object that may be missed and may be hit without cost (COCO's ``iscrowd``, VOC's
  ``difficult``): evaluation neither counts nor penalises it (:mod:`resprout.metrics.detection`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from resprout.data import readers
from resprout.errors import DataError

__all__ = ["DetectionDataset", "chw_tensor", "hwc_array", "read_annotation_file"]


def read_annotation_file(path: Path, holds: str) -> bytes:
    """The bytes of an annotation file (VOC XML, COCO JSON); one :class:`DataError` line if it is not a regular
    file, cannot be read, or is empty (``holds`` says what it should hold)."""
    readers.check_regular_file(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path} cannot be read: {readers.one_line(e.strerror or e)}") from None
    if not data.strip():
        raise DataError(f"{path} is empty ({holds})")
    return data


def chw_tensor(array: np.ndarray) -> torch.Tensor:
    """A uint8 (H, W) or (H, W, C) array (Pillow's layout) as a new uint8 tensor (C, H, W)."""
    image = torch.from_numpy(np.array(array, dtype=np.uint8))  # a copy: Pillow's arrays are read-only
    return image[None] if image.dim() == 2 else image.permute(2, 0, 1).contiguous()


def hwc_array(image: torch.Tensor) -> np.ndarray:
    """A uint8 (C, H, W) tensor as Pillow takes it: (H, W) for one channel, (H, W, C) otherwise."""
    return np.ascontiguousarray(image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy())


@dataclass(repr=False, eq=False)
class DetectionDataset:
    """One split of a detection dataset in memory. ``ids[i]`` names image ``i`` (its file stem or COCO id)."""

    name: str
    classes: list[str]
    images: list[torch.Tensor]
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    ids: list[str]
    crowd: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        if not self.classes:
            raise ValueError(f"detection dataset {self.name!r} has no classes")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"detection dataset {self.name!r} names a class twice: {self.classes}")
        n = len(self.images)
        if not self.crowd:
            self.crowd = [torch.zeros(len(b), dtype=torch.bool) for b in self.boxes]
        for what, seq in (("boxes", self.boxes), ("labels", self.labels), ("ids", self.ids), ("crowd", self.crowd)):
            if len(seq) != n:
                raise ValueError(f"detection dataset {self.name!r} has {n} images but {len(seq)} {what}")
        if len(set(self.ids)) != n:
            raise ValueError(f"detection dataset {self.name!r} has duplicate image ids")
        for i in range(n):
            self._check(i)

    def _check(self, i: int) -> None:
        image, boxes, labels, crowd = self.images[i], self.boxes[i], self.labels[i], self.crowd[i]
        where = f"detection dataset {self.name!r} image {self.ids[i]!r}"
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3:
            raise TypeError(f"{where}: the image must be a uint8 tensor (C, H, W)")
        if boxes.dtype != torch.float32 or boxes.dim() != 2 or boxes.shape[1] != 4:
            raise TypeError(f"{where}: boxes must be a float32 tensor (K, 4), got {boxes.dtype} {tuple(boxes.shape)}")
        if labels.dtype != torch.int64 or labels.shape != (len(boxes),):
            raise TypeError(f"{where}: labels must be an int64 tensor ({len(boxes)},)")
        if crowd.dtype != torch.bool or crowd.shape != (len(boxes),):
            raise TypeError(f"{where}: crowd must be a bool tensor ({len(boxes)},)")
        h, w = image.shape[1:]
        if len(boxes):
            x1, y1, x2, y2 = boxes.unbind(1)
            bad = (x1 < 0) | (y1 < 0) | (x2 > w) | (y2 > h) | (x2 <= x1) | (y2 <= y1)
            if bool(bad.any()):
                k = int(bad.nonzero()[0])
                raise ValueError(f"{where}: box {boxes[k].tolist()} is empty or outside the {w}x{h} image")
            if int(labels.min()) < 0 or int(labels.max()) >= len(self.classes):
                raise ValueError(f"{where}: labels must be 0..{len(self.classes) - 1}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_objects(self) -> int:
        return sum(len(b) for b in self.boxes)

    def target(self, i: int, label_offset: int = 1) -> dict[str, torch.Tensor]:
        """The target of image ``i`` as torchvision's detectors take it: ``boxes`` (K, 4) float32 and ``labels``
        (K,) int64 shifted by ``label_offset`` (1: label 0 is their background). Crowd objects are left out: a
        detector cannot learn from a region it is not asked to find (torchvision's COCO recipe drops them too)."""
        keep = ~self.crowd[i]
        return {"boxes": self.boxes[i][keep], "labels": self.labels[i][keep] + label_offset}

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as float32 in [0, 1], (C, H, W): what torchvision's detectors take."""
        return self.images[i].float().div_(255)

    def batches(self, batch_size: int, indices: Sequence[int] | None = None,
                label_offset: int = 1) -> Iterator[tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]]:
        """``(images, targets)`` lists of at most ``batch_size`` images, in order of ``indices`` (all by default)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        order = list(range(len(self))) if indices is None else list(indices)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            yield [self.image(i) for i in chunk], [self.target(i, label_offset) for i in chunk]

    def subset(self, indices: Sequence[int], name: str | None = None) -> DetectionDataset:
        """The images at ``indices`` (in that order), sharing their tensors."""
        idx = list(indices)
        return DetectionDataset(name or self.name, list(self.classes), [self.images[i] for i in idx],
                                [self.boxes[i] for i in idx], [self.labels[i] for i in idx],
                                [self.ids[i] for i in idx], [self.crowd[i] for i in idx])

    def __repr__(self) -> str:
        return (f"DetectionDataset({self.name!r}, {len(self)} images, {self.num_objects} objects, "
                f"{self.num_classes} classes)")
