"""The ``digits`` source: scikit-learn's 8x8 handwritten digits (offline)."""

from __future__ import annotations

import numpy as np

from resprout.data.dataset import Dataset, make_split
from resprout.data.sources import register_source
from resprout.data.stratify import fixed_test_split


@register_source("digits")
def _digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn) with a fixed stratified 20%
    test split (seed 0, independent of data_seed)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.floor(np.asarray(d.images, dtype=np.float64) * (255.0 / 16.0) + 0.5)
    images = np.clip(images, 0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = np.asarray(d.target, dtype=np.int64)
    train_idx, test_idx, _ = fixed_test_split(labels, 10)
    return Dataset(name="digits", train=make_split(images[train_idx], labels[train_idx]),
                   test=make_split(images[test_idx], labels[test_idx]), val=None,
                   classes=[str(i) for i in range(10)])
