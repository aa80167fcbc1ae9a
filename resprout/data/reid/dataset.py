"""The re-identification data model: :class:`ReidSplit` (images with an identity and a camera each) and
:class:`ReidDataset` (train, query and gallery splits).

Re-identification is retrieval: a query image is compared with every gallery image, and the gallery images of the
query's identity seen by *another* camera are the ones to find (Zheng et al., "Scalable Person Re-identification:
A Benchmark", ICCV 2015, Sec. 4, the Market-1501 protocol; :mod:`resprout.metrics.reid`). So every query identity
must have a gallery image from another camera: a dataset where one has none is refused (DataError), since its
average precision would be undefined. The train split's identities are disjoint from the query's in the benchmarks
(open set); its labels for a classification head are :meth:`ReidSplit.train_labels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from resprout.errors import DataError

__all__ = ["ReidDataset", "ReidSplit", "check_queries"]


@dataclass(repr=False, eq=False)
class ReidSplit:
    """``images`` uint8 (N, C, H, W), ``ids`` int64 (N,) identities, ``cameras`` int64 (N,), ``names`` (N file
    names, or any label of each image)."""

    images: torch.Tensor
    ids: torch.Tensor
    cameras: torch.Tensor
    names: list[str]

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise TypeError("ReidSplit.images must be a uint8 tensor (N, C, H, W)")
        n = len(self.images)
        for what, t in (("ids", self.ids), ("cameras", self.cameras)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.shape != (n,):
                raise TypeError(f"ReidSplit.{what} must be an int64 tensor ({n},)")
        if len(self.names) != n:
            raise ValueError(f"ReidSplit has {n} images but {len(self.names)} names")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_ids(self) -> int:
        return len(torch.unique(self.ids))

    def train_labels(self) -> tuple[torch.Tensor, list[int]]:
        """Labels 0..K-1 for a classification head (identities in increasing order) and the identity of each."""
        identities, labels = torch.unique(self.ids, sorted=True, return_inverse=True)
        return labels, identities.tolist()

    def __repr__(self) -> str:
        return f"ReidSplit({len(self)} images, {self.num_ids} identities, {len(torch.unique(self.cameras))} cameras)"


def check_queries(query_ids: torch.Tensor, query_cameras: torch.Tensor, gallery_ids: torch.Tensor,
                  gallery_cameras: torch.Tensor) -> int | None:
    """The index of the first query with no gallery image of its identity from another camera, or None."""
    for start in range(0, len(query_ids), 1024):  # blocks: Market-1501 has 3,368 x 15,913 pairs
        q_ids, q_cams = query_ids[start:start + 1024, None], query_cameras[start:start + 1024, None]
        lonely = ~((q_ids == gallery_ids[None, :]) & (q_cams != gallery_cameras[None, :])).any(dim=1)
        if bool(lonely.any()):
            return start + int(lonely.nonzero()[0])
    return None


@dataclass(repr=False, eq=False)
class ReidDataset:
    """Train, query and gallery splits of one re-identification set. ``junk`` counts the gallery images the
    protocol leaves out (Market-1501's identity -1), so the number is reported rather than lost."""

    name: str
    train: ReidSplit
    query: ReidSplit
    gallery: ReidSplit
    junk: int = 0

    def __post_init__(self) -> None:
        shape = tuple(self.train.images.shape[1:])
        for split_name, split in (("query", self.query), ("gallery", self.gallery)):
            if tuple(split.images.shape[1:]) != shape:
                raise DataError(f"re-id set {self.name!r}: {split_name} images are {tuple(split.images.shape[1:])} "
                                f"but train images are {shape}")
        for split_name, split in self.splits().items():
            if len(split) == 0:
                raise DataError(f"re-id set {self.name!r} has no {split_name} images")
        lonely = check_queries(self.query.ids, self.query.cameras, self.gallery.ids, self.gallery.cameras)
        if lonely is not None:
            raise DataError(f"re-id set {self.name!r}: query {self.query.names[lonely]} (identity "
                            f"{int(self.query.ids[lonely])}, camera {int(self.query.cameras[lonely])}) has no gallery "
                            f"image of its identity from another camera")

    def splits(self) -> dict[str, ReidSplit]:
        return {"train": self.train, "query": self.query, "gallery": self.gallery}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k} {len(s)} images / {s.num_ids} ids" for k, s in self.splits().items())
        return f"ReidDataset({self.name!r}: {parts}; {self.junk} junk)"
