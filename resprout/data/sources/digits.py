"""The ``digits`` source: scikit-learn's 8x8 handwritten digits (offline)."""

from __future__ import annotations

import numpy as np

from resprout.data.dataset import Dataset, make_split
from resprout.data.sources.registry import register_source
from resprout.data.stratify import fixed_test_split


@register_source("digits")
def _digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn) with a fixed stratified 20%
    test split (seed 0, independent of data_seed)."""
    raw_images, raw_labels = _read_digits()
    images = np.floor(np.asarray(raw_images, dtype=np.float64) * (255.0 / 16.0) + 0.5)
    images = np.clip(images, 0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = np.asarray(raw_labels, dtype=np.int64)
    train_idx, test_idx, _ = fixed_test_split(labels, 10)
    return Dataset(name="digits", train=make_split(images[train_idx], labels[train_idx]),
                   test=make_split(images[test_idx], labels[test_idx]), val=None,
                   classes=[str(i) for i in range(10)])


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) in 0..16, labels) from the CSV file scikit-learn ships, read as its ``load_digits``
    reads it, without importing scikit-learn (seconds of start-up, for a 100 kB file)."""
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")  # locates the package without running it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits  # a layout we do not know: let scikit-learn find it

        d = load_digits()
        return d.images, d.target
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        data = np.loadtxt(fh, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
