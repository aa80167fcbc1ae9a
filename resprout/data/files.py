"""Datasets of image files: what a source read from disk lists before any image is decoded.

A source that reads image files (``imagefolder`` and the five fine-grained sets of the Knowledge Evolution paper)
returns a :class:`FileDataset`: the files and labels of each split and the class names. What happens next depends on
the run:

* :func:`decode` reads every image into a fixed-size :class:`~resprout.data.Dataset` (all images of one size, or
  resized to ``image_size`` x ``image_size``), the in-memory path of small sets (``augment=crop+flip`` and the like);
* :mod:`resprout.data.natural` keeps the images at their aspect ratio for ``augment=imagenet``, in memory or read
  from disk by DataLoader workers.

:func:`~resprout.data.load_source` decodes; :func:`~resprout.data.sources.open_source` returns the listing itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resprout.data import readers
from resprout.data.dataset import Dataset, Split, SplitsAndClasses, make_split
from resprout.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "val", "test")
GB = 1e9


@dataclass(repr=False, eq=False)
class FileSplit:
    """The image files of one split and their int64 labels."""

    files: list[Path]
    labels: torch.Tensor

    def __post_init__(self) -> None:
        self.files = [Path(f) for f in self.files]
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1).contiguous()
        if len(self.files) != len(self.labels):
            raise ValueError(f"FileSplit has {len(self.files)} files but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, idx: np.ndarray | None) -> FileSplit:
        """The files at ``idx`` (in that order); the split itself for None."""
        if idx is None:
            return self
        return FileSplit([self.files[i] for i in idx.tolist()], self.labels[torch.from_numpy(idx.astype(np.int64))])

    def __repr__(self) -> str:
        return f"FileSplit({len(self)} files)"


@dataclass(repr=False, eq=False)
class FileDataset(SplitsAndClasses):
    """The splits of a source of image files (``val`` None when it has none) and its class names. ``channels`` (3 or
    1) and ``image_size`` (None: the images' own, equal sizes) say how :func:`decode` reads the files."""

    name: str
    train: FileSplit
    test: FileSplit
    val: FileSplit | None
    classes: list[str]
    channels: int = 3
    image_size: int | None = None

    def __post_init__(self) -> None:
        self._check_classes()

    @property
    def mode(self) -> str:
        """The Pillow mode the files are decoded in."""
        return "L" if self.channels == 1 else "RGB"

    def __len__(self) -> int:
        return sum(len(s) for s in self.splits().values())

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits().items())
        return f"FileDataset({self.name!r}, {sizes}, num_classes={self.num_classes})"


def image_sizes(files: list[Path], limit: int | None = None) -> list[tuple[int, int]]:
    """(height, width) of the files, from their headers (no decoding); with ``limit``, of at most that many files
    spread evenly over the list (the same ones every time)."""
    from PIL import Image

    if limit is not None and len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int).tolist()]
    out = []
    for f in files:
        readers.check_regular_file(f)
        try:
            with Image.open(f) as im:
                w, h = im.size
        except Exception as e:  # noqa: BLE001  (any reason Pillow cannot read it: one line naming the file)
            raise DataError(f"{f} cannot be read: {readers.one_line(e) or type(e).__name__}") from None
        out.append((int(h), int(w)))
    return out


def describe_bytes(n: float) -> str:
    """``n`` bytes for a reader: ``1.23 GB``, ``45.6 MB``, ``789 kB``."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} bytes"


def check_budget(what: str, nbytes: float, budget: float | None, *, estimated: str = "",
                 say: Callable[[str], None] | None = None) -> None:
    """State how much memory ``what`` takes in memory (``say``) and refuse (one line, with the streaming hint)
    above ``budget`` bytes."""
    size = describe_bytes(nbytes) + (f" ({estimated})" if estimated else "")
    if budget is not None and nbytes > budget:
        raise ConfigError(f"{what} needs {size} in memory, above memory_budget {describe_bytes(budget)}; use "
                          f"data_mode=stream (augment=imagenet: images read from disk by DataLoader workers) or "
                          f"raise memory_budget (GB)")
    if say is not None:
        limit = f", memory_budget {describe_bytes(budget)}" if budget is not None else ""
        say(f"data: {what}: {size} in memory{limit}")


def decode(fds: FileDataset, *, budget: float | None = None, say: Callable[[str], None] | None = None) -> Dataset:
    """Every image of ``fds`` read into memory as one fixed-size uint8 tensor per split (see :class:`FileDataset`);
    the size is stated (``say``) and checked against ``budget`` (bytes) before anything is decoded."""
    total = len(fds)
    if fds.image_size is not None:
        h = w = fds.image_size
    else:
        h, w = image_sizes([fds.train.files[0]])[0]
    check_budget(f"{fds.name} ({total:,} images of {w}x{h}x{fds.channels})", total * h * w * fds.channels, budget,
                 say=say)
    first: tuple[Path, tuple[int, int]] | None = None
    splits: dict[str, Split] = {}
    for s, split in fds.splits().items():
        arrays = []
        for file in split.files:
            arr = readers.read_image(file, fds.mode, fds.image_size)
            hw = (int(arr.shape[0]), int(arr.shape[1]))
            if first is None:
                first = (file, hw)
            elif hw != first[1]:
                raise DataError(f"images differ in size: {first[0]} is {first[1][1]}x{first[1][0]} but {file} is "
                                f"{hw[1]}x{hw[0]}; pass the option image_size=S to resize them all to SxS")
            arrays.append(arr)
        stacked = np.stack(arrays)
        stacked = stacked[:, None] if fds.mode == "L" else stacked.transpose(0, 3, 1, 2)
        splits[s] = make_split(np.ascontiguousarray(stacked), split.labels)
    return Dataset(name=fds.name, train=splits["train"], test=splits["test"], val=splits.get("val"),
                   classes=fds.classes)


def memory_budget(gigabytes: float | None) -> float:
    """The memory budget in bytes: ``gigabytes``, or half of this machine's physical memory."""
    if gigabytes is not None:
        return float(gigabytes) * GB
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2.0
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no stated limit
        return float("inf")
