"""The data model: :class:`Split` (uint8 images and int64 labels of one split) and :class:`Dataset` (the splits of
one source and its class names), plus :func:`channel_stats` (exact per-channel mean and std)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from resprout.errors import DataError


@dataclass(repr=False, eq=False)
class Split:
    """Images and labels of one split: ``images`` uint8 (N, C, H, W) contiguous, ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise TypeError(f"Split.images must be a uint8 tensor of shape (N, C, H, W), got {_describe(self.images)}")
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise TypeError(f"Split.labels must be an int64 tensor of shape (N,), got {_describe(self.labels)}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(f"Split has {self.images.shape[0]} images but {self.labels.shape[0]} labels")
        self.images = self.images.contiguous()
        self.labels = self.labels.contiguous()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self, num_classes: int) -> list[int]:
        """How many images each class has."""
        return torch.bincount(self.labels, minlength=num_classes).tolist()

    def __repr__(self) -> str:
        return f"Split(images={tuple(self.images.shape)} uint8, labels={len(self)})"


class SplitsAndClasses:
    """What a dataset in memory (:class:`Dataset`) and a dataset of files
    (:class:`~resprout.data.files.FileDataset`) share: the splits ``train``, ``val`` (or None), ``test`` with
    ``labels``, and the class names."""

    name: str
    classes: list[str]

    def _check_classes(self) -> None:
        """Class names as strings, at least one, and every label one of them."""
        self.classes = [str(c) for c in self.classes]
        if not self.classes:
            raise DataError(f"data source {self.name!r} has no classes")
        for split_name, split in self.splits().items():
            if len(split) and (int(split.labels.min()) < 0 or int(split.labels.max()) >= len(self.classes)):
                raise DataError(f"data source {self.name!r}: {split_name} labels must be 0..{len(self.classes) - 1}, "
                                f"found {int(split.labels.min())}..{int(split.labels.max())}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def splits(self) -> dict:
        """The splits that exist, by name: train, (val,) test."""
        out = {"train": self.train}
        if self.val is not None:
            out["val"] = self.val
        out["test"] = self.test
        return out


@dataclass(repr=False, eq=False)
class Dataset(SplitsAndClasses):
    """A dataset in memory. ``classes[i]`` is the name of label ``i``; ``val`` is None if there is no val split."""

    name: str
    train: Split
    test: Split
    val: Split | None
    classes: list[str]

    def __post_init__(self) -> None:
        self._check_classes()
        shape = tuple(self.train.images.shape[1:])
        for split_name, split in self.splits().items():
            if tuple(split.images.shape[1:]) != shape:
                raise DataError(f"data source {self.name!r}: {split_name} images are "
                                f"{tuple(split.images.shape[1:])} but train images are {shape}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits().items())
        return f"Dataset({self.name!r}, {sizes}, input_shape={self.input_shape}, num_classes={self.num_classes})"


def channel_stats(split: Split) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) standard deviation of ``split.images / 255``, computed exactly."""
    n, c, h, w = split.images.shape
    if n == 0:
        raise DataError("cannot compute channel statistics of an empty split")
    return stats_of_histograms([torch.bincount(split.images[:, i].reshape(-1), minlength=256) for i in range(c)])


def stats_of_histograms(hists: list[torch.Tensor] | torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) standard deviation of ``x / 255`` from per-channel histograms of the 256
    gray levels, exactly (integer sums)."""
    values = torch.arange(256, dtype=torch.int64).tolist()
    means, stds = [], []
    for hist in hists:
        # A histogram of the 256 gray levels gives exact integer sums; var * count^2 = count*sum(x^2) - sum(x)^2.
        hist = hist.tolist()
        count = sum(hist)
        total = sum(v * m for v, m in zip(values, hist))
        total_sq = sum(v * v * m for v, m in zip(values, hist))
        means.append(total / count / 255.0)
        stds.append(math.sqrt(max(count * total_sq - total * total, 0)) / count / 255.0)
    return means, stds


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def make_split(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> Split:
    """A :class:`Split` from numpy arrays or tensors (uint8 images, integer labels)."""
    im = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images, np.uint8))
    lb = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(labels, np.int64))
    return Split(im.contiguous(), lb.to(torch.int64).contiguous())
