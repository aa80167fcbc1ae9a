"""The ``fashion-mnist`` and ``mnist`` sources: the four MNIST-style IDX files (optionally gzipped)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from resprout.data import readers
from resprout.data.dataset import Dataset, make_split
from resprout.data.sources.registry import register_source
from resprout.data.sources._paths import env_dirs, user_path
from resprout.errors import DataError

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
#: Where a source looks when neither data_path nor RESPROUT_DATA has its files (Debian's dataset packages).
SYSTEM_DATA_DIRS: dict[str, list[Path]] = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}
_HOW_TO_GET = {
    "fashion-mnist": "install them with 'apt-get install -y dataset-fashion-mnist' or pass data_path=DIR",
    "mnist": "put the four MNIST IDX files (optionally .gz) in a folder and pass data_path=DIR",
}


def _idx_files_in(folder: Path) -> dict[str, Path]:
    """The IDX files present in ``folder`` (the raw file preferred over its .gz)."""
    found = {}
    for base in IDX_FILES:
        for candidate in (folder / base, folder / f"{base}.gz"):
            if candidate.is_file():
                found[base] = candidate
                break
    return found


def _find_idx_dir(source: str, path: str | os.PathLike | None) -> dict[str, Path]:
    if path is not None:
        root = user_path(source, path)
        candidates = [root, root / source]
    else:
        candidates = [d for env in env_dirs() for d in (env / source, env)] + SYSTEM_DATA_DIRS.get(source, [])
    for folder in candidates:
        found = _idx_files_in(folder)
        if len(found) == len(IDX_FILES):
            return found
        if found:
            missing = [b for b in IDX_FILES if b not in found]
            raise DataError(f"{folder} has {len(found)} of the 4 IDX files of {source}: "
                            f"{folder / missing[0]}[.gz] is missing")
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    env_note = "" if path is not None or env_dirs() else "; RESPROUT_DATA is not set"
    raise DataError(f"no {source} IDX files ({IDX_FILES[0]}[.gz], ...) found; looked in: {looked}{env_note}; "
                    f"{_HOW_TO_GET.get(source, 'pass data_path=DIR')}")


def _load_idx(source: str, path: str | os.PathLike | None, classes: list[str]) -> Dataset:
    files = _find_idx_dir(source, path)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img_file, lab_file = files[f"{prefix}-images-idx3-ubyte"], files[f"{prefix}-labels-idx1-ubyte"]
        images = readers.read_idx(img_file, 3)
        labels = readers.read_idx(lab_file, 1)
        if len(images) == 0:
            raise DataError(f"{img_file} has no images")
        if len(labels) != len(images):
            raise DataError(f"{lab_file} has {len(labels)} labels but {img_file} has {len(images)} images")
        if len(labels) and int(labels.max()) >= len(classes):
            raise DataError(f"{lab_file} has label {int(labels.max())}; labels must be 0..{len(classes) - 1}")
        n, h, w = images.shape
        splits[split] = make_split(images.reshape(n, 1, h, w), labels.astype(np.int64))
    if splits["train"].images.shape[1:] != splits["test"].images.shape[1:]:
        raise DataError(f"{files['t10k-images-idx3-ubyte']} has images of "
                        f"{tuple(splits['test'].images.shape[2:])} but {files['train-images-idx3-ubyte']} has "
                        f"{tuple(splits['train'].images.shape[2:])}")
    return Dataset(name=source, train=splits["train"], test=splits["test"], val=None, classes=classes)


@register_source("fashion-mnist")
def fashion_mnist(path: str | os.PathLike | None = None) -> Dataset:
    """Fashion-MNIST (60000 train, 10000 test, 28x28 grayscale) from IDX files."""
    return _load_idx("fashion-mnist", path, list(FASHION_MNIST_CLASSES))


@register_source("mnist")
def _mnist(path: str | os.PathLike | None = None) -> Dataset:
    """MNIST (60000 train, 10000 test, 28x28 grayscale) from IDX files."""
    return _load_idx("mnist", path, [str(i) for i in range(10)])

