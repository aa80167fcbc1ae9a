"""The re-identification sources: ``fashion-reid`` (the Fashion-MNIST open-set analog,
:mod:`resprout.data.reid.fashion`), ``market1501`` and ``dukemtmc`` (their folders, :mod:`resprout.data.reid.folders`).

Each returns a :class:`~resprout.data.reid.ReidDataset` (train, query and gallery images with an identity and a
camera each), not a classification :class:`~resprout.data.Dataset`: a run on one trains an identity classifier and
is evaluated by the re-id task (rank-1, rank-5, mAP; :class:`resprout.engine.task.ReidTask`).
"""

from __future__ import annotations

import os

from resprout.data.sources._paths import user_path
from resprout.data.sources.registry import register_source
from resprout.errors import ConfigError
from resprout.options import Spec

_IDS = {"train_classes": Spec(help="Fashion-MNIST classes the train identities come from (the test identities "
                                   "come from the others), e.g. 0,1,2,3,4"),
        "n_train_ids": Spec(int, min=1, help="train identities (the model's classes)"),
        "n_test_ids": Spec(int, min=1, help="query identities, each also in the gallery"),
        "n_distractor_ids": Spec(int, min=0, help="identities in the gallery only"),
        "per_camera": Spec(int, min=1, help="images of every identity per camera (4 cameras)"),
        "query_cameras": Spec(int, min=1, help="cameras that give one query image of each test identity"),
        "seed": Spec(int, min=0, help="seed of the identities drawn and of every view")}


@register_source("fashion-reid", options=_IDS)
def _fashion_reid(path: str | os.PathLike | None = None, *, train_classes: int | list = (0, 1, 2, 3, 4),
                  n_train_ids: int = 500, n_test_ids: int = 500, n_distractor_ids: int = 250, per_camera: int = 2,
                  query_cameras: int = 2, seed: int = 0):
    """Re-identification analog of Market-1501 made of Fashion-MNIST items seen by four cameras, open set (``path``:
    the Fashion-MNIST folder)."""
    from resprout.data.reid.fashion import fashion_reid

    classes = [train_classes] if isinstance(train_classes, int) else train_classes
    if isinstance(train_classes, bool) or not isinstance(classes, (list, tuple)) or \
            not all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        raise ConfigError(f"data.train_classes must be class indices of Fashion-MNIST (e.g. 0,1,2,3,4); got "
                          f"{train_classes!r}")
    return fashion_reid(fashion_path=path, train_classes=classes, n_train_ids=n_train_ids, n_test_ids=n_test_ids,
                        n_distractor_ids=n_distractor_ids, per_camera=per_camera, query_cameras=query_cameras,
                        seed=seed)


_FOLDER = {"size": Spec(list, allow_none=True, help="(height, width) every image is resized to: needed when crops "
                                                     "differ in size (Duke), e.g. 256,128"),
           "mode": Spec(str, choices=("RGB", "L"), help="RGB, or L (grayscale)")}


def _read_folder(source: str, path, size, mode):
    from resprout.data.reid.folders import read_reid_folder

    if path is None:
        raise ConfigError(f"data source {source!r} needs data_path=DIR (a folder with bounding_box_train, query "
                          f"and bounding_box_test)")
    if size is not None and (len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                       for v in size)):
        raise ConfigError(f"data.size must be height,width in pixels (e.g. 256,128); got {size!r}")
    return read_reid_folder(user_path(source, path), source, size=tuple(size) if size else None, mode=mode)


@register_source("market1501", options=_FOLDER)
def _market1501(path: str | os.PathLike | None = None, *, size: list | None = None, mode: str = "RGB"):
    """Market-1501 folders (0002_c1s1_000451_03.jpg: identity, camera; -1 junk left out, 0000 distractors kept)."""
    return _read_folder("market1501", path, size, mode)


@register_source("dukemtmc", options=_FOLDER)
def _dukemtmc(path: str | os.PathLike | None = None, *, size: list | None = None, mode: str = "RGB"):
    """DukeMTMC-reID folders (0005_c2_f0046985.jpg: identity, camera); its crops differ in size: give data.size."""
    return _read_folder("dukemtmc", path, size, mode)
