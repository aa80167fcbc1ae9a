"""Seeded, stratified choices of images: the fixed test splits, the validation carve and the ``per_class`` subset.

The images of each class are ranked by a key drawn from numpy's PCG64 bit stream, which numpy keeps identical
across versions and platforms, so a given seed selects the same images everywhere. Taking the first N of each
class makes the subsets nested: with the same seed, ``per_class=10`` is a subset of ``per_class=20``.
"""

from __future__ import annotations

import math

import numpy as np

# Salts that keep the seeded choices independent of each other.
SALT_TEST = 0x7E57_5E7
SALT_VAL = 0x0A11_DA7E
SALT_SUBSET = 0x5B_5E7
FIXED_TEST_FRACTION = 0.2
FIXED_TEST_SEED = 0


def rank_keys(n: int, seed: int, salt: int) -> np.ndarray:
    """``n`` random 64-bit keys from PCG64 (a bit stream numpy keeps stable across versions)."""
    bitgen = np.random.PCG64(np.random.SeedSequence([int(seed), int(salt)]))
    return bitgen.random_raw(n) if n else np.zeros(0, dtype=np.uint64)


def by_class(labels: np.ndarray, keys: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """For each class, the indices of its images ordered by their random key."""
    order = np.lexsort((np.arange(len(labels)), keys, labels))  # by label, then key, then index
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    return [order[bounds[c]:bounds[c + 1]] for c in range(num_classes)]


def stratified_fraction(labels: np.ndarray, num_classes: int, fraction: float, seed: int,
                         salt: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Split indices into (kept, taken): about ``fraction`` of each class is taken, at least one image, and at
    least one is kept. Also returns (class, count) for every present class too small for that (fewer than 2)."""
    groups = by_class(labels, rank_keys(len(labels), seed, salt), num_classes)
    taken, too_few = [], []
    for c, idx in enumerate(groups):
        n = len(idx)
        if n == 0:
            continue
        if n < 2:
            too_few.append((c, n))
            continue
        k = min(max(1, int(math.floor(fraction * n + 0.5))), n - 1)
        taken.append(idx[:k])
    taken_idx = np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[taken_idx] = False
    return np.flatnonzero(mask), taken_idx, too_few


def fixed_test_split(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """The fixed stratified 20% test split (seed 0) of sources without an official one."""
    return stratified_fraction(labels, num_classes, FIXED_TEST_FRACTION, FIXED_TEST_SEED, SALT_TEST)
