"""The re-identification set a run trains on: :class:`ReidData` (from a :class:`ReidDataset` by
:func:`prepare_reid`) and its evaluation loader, :class:`ReidEvalLoader`.

Training is identity classification, as in the torchreid/OSNet baseline the grafting paper follows for its Table 7
(Sec. 4.2): the train split's labels are its identities numbered 0..K-1 (:meth:`ReidSplit.train_labels`), and the
model has K classes. Evaluation is retrieval: the ``test`` split is the queries followed by the gallery, labelled
with their identities, each image with its camera, so that :class:`resprout.engine.task.ReidTask` can rank the
gallery for every query by Market-1501's protocol. There is no validation split (the benchmarks have none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from resprout.data.dataset import Split
from resprout.data.loader import EvalLoader
from resprout.data.preparation import _transform
from resprout.data.reid.dataset import ReidDataset
from resprout.errors import ConfigError

__all__ = ["ReidData", "ReidEvalLoader", "prepare_reid"]


@dataclass(repr=False, eq=False)
class ReidData:
    """``train``: images and labels 0..K-1 (``classes[k]`` is the identity of label k, as text); ``test``: the
    ``queries`` query images first, then the gallery, labelled by identity, with ``test_cameras``; ``junk``: the
    gallery images the protocol left out (Market-1501's identity -1)."""

    name: str
    train: Split
    test: Split
    test_cameras: torch.Tensor
    queries: int
    classes: list[str]
    junk: int = 0
    val: ClassVar[None] = None  # the benchmarks have no validation split; best epochs are chosen on test

    @property
    def num_classes(self) -> int:
        """The train identities: the model's classes."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "test": self.test}

    def __repr__(self) -> str:
        return (f"ReidData({self.name!r}: train {len(self.train)} images / {self.num_classes} identities, "
                f"{self.queries} queries, {len(self.test) - self.queries} gallery images)")


def prepare_reid(ds: ReidDataset, *, image_size: int | None = None, channels: int | None = None,
                 fit: str = "auto") -> ReidData:
    """The run's :class:`ReidData` of a re-id set; ``image_size``, ``channels`` and ``fit`` change every split's
    images as :func:`resprout.data.prepare` does (a square ``image_size``: Market-1501's 128x64 crops would be
    stretched, so keep their size unless a model needs another)."""
    if not isinstance(ds, ReidDataset):
        raise TypeError(f"prepare_reid() needs a ReidDataset, got {type(ds).__name__}")
    size = None if image_size is None else (image_size, image_size)
    labels, identities = ds.train.train_labels()
    train = Split(_transform(ds.train.images, size, channels, fit), labels)
    images = torch.cat([ds.query.images, ds.gallery.images])
    test = Split(_transform(images, size, channels, fit), torch.cat([ds.query.ids, ds.gallery.ids]))
    return ReidData(ds.name, train, test, torch.cat([ds.query.cameras, ds.gallery.cameras]), len(ds.query),
                    [str(i) for i in identities], ds.junk)


class ReidEvalLoader(EvalLoader):
    """The ordered batches of a re-id ``test`` split (queries first, then the gallery; labels are identities) with
    each image's camera (``cameras``) and the number of queries (``queries``), in one process: the ranking needs
    every gallery image for every query."""

    def __init__(self, data: ReidData, **kw) -> None:
        if kw.get("world_size", 1) != 1:
            raise ConfigError("a re-id run ranks the whole gallery for every query in one process; run it without "
                              "torchrun")
        super().__init__(data.test.images, data.test.labels, **kw)
        self.cameras = data.test_cameras.clone()
        self.queries = data.queries
