"""The ``cub200`` source: Caltech-UCSD Birds-200-2011 (Wah et al. 2011) in its official layout.

``CUB_200_2011/`` holds ``images/<class folder>/<file>.jpg`` and three lists of ``<image id> <value>`` lines:
``images.txt`` (the image's path under ``images/``), ``image_class_labels.txt`` (its class id, 1..200) and
``train_test_split.txt`` (1: train, 0: test); ``classes.txt`` (``<class id> <name>``) names the classes (without it,
a class is named by its images' folder). 5,994 train and 5,794 test images; no validation split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from resprout.data.files import FileDataset, FileSplit
from resprout.data.readers import listed_file
from resprout.data.sources.registry import register_source
from resprout.data.sources._official import DECODE_OPTIONS, as_int, find_root, read_table, required
from resprout.errors import DataError

LISTS = ("images.txt", "image_class_labels.txt", "train_test_split.txt")


@register_source("cub200", options=DECODE_OPTIONS)
def _cub200(path: str | os.PathLike | None = None, *, image_size: int | None = None,
            channels: int = 3) -> FileDataset:
    """CUB-200-2011 (``path``: the ``CUB_200_2011`` folder or its parent): the official train/test split."""
    root = find_root("cub200", path, "images.txt", ("CUB_200_2011",),
                     "extract CUB_200_2011.tgz (Caltech's CUB-200-2011 page) and pass data_path=DIR")
    files = [required(root, name, "CUB-200-2011") for name in LISTS]
    images, labels, is_train = (read_table(f, what) for f, what in zip(files, (
        "<image id> <path>", "<image id> <class id>", "<image id> <is_training_image>")))
    for f, table in ((files[1], labels), (files[2], is_train)):
        if set(table) != set(images):
            extra = sorted(set(table) - set(images)) or sorted(set(images) - set(table))
            side = f"{f} lists" if set(table) - set(images) else f"{f} lacks"
            raise DataError(f"{side} image id {extra[0]} ({len(extra)} ids differ from {files[0]})")
    ids = sorted(images, key=lambda i: as_int(i, files[0], i, "the image id"))
    cls = np.array([as_int(labels[i], files[1], i, "the class id") for i in ids], dtype=np.int64)
    flags = [is_train[i] for i in ids]
    bad = next((i for i, f in zip(ids, flags) if f not in ("0", "1")), None)
    if bad is not None:
        raise DataError(f"{files[2]}: image {bad} has is_training_image {is_train[bad]!r}, expected 1 or 0")
    classes = _class_names(root, ids, images, cls)
    folder = root / "images"
    paths = [listed_file(folder, images[i], f"{files[0]} image {i}") for i in ids]
    train = np.array([f == "1" for f in flags])
    if not train.any() or train.all():
        raise DataError(f"{files[2]} puts every image in {'train' if train.all() else 'test'}")
    split = {name: FileSplit([p for p, t in zip(paths, train) if t == want], cls[train == want] - 1)
             for name, want in (("train", True), ("test", False))}
    return FileDataset("cub200", train=split["train"], test=split["test"], val=None, classes=classes,
                       channels=channels, image_size=image_size)


def _class_names(root: Path, ids: list[str], images: dict[str, str], cls: np.ndarray) -> list[str]:
    """Names of class ids 1..K: from ``classes.txt``, or else each class's image folder (which must agree)."""
    k = int(cls.max()) if cls.size else 0
    if cls.size == 0 or int(cls.min()) < 1:
        raise DataError(f"{root / 'image_class_labels.txt'}: class ids must start at 1, found {int(cls.min())}")
    names_file = root / "classes.txt"
    if names_file.exists():
        table = read_table(names_file, "<class id> <name>")
        want = {str(c) for c in range(1, k + 1)}
        if not want <= set(table):
            missing = sorted(want - set(table), key=int)[0]
            raise DataError(f"{names_file} has no name for class id {missing} (image_class_labels.txt uses 1..{k})")
        return [table[str(c)] for c in range(1, k + 1)]
    names: dict[int, str] = {}
    for i, c in zip(ids, cls.tolist()):
        folder = Path(images[i]).parts[0] if len(Path(images[i]).parts) > 1 else ""
        if names.setdefault(c, folder) != folder:
            raise DataError(f"class id {c} has images in {names[c]!r} and {folder!r} (and there is no "
                            f"{names_file} to name it)")
    missing = next((c for c in range(1, k + 1) if c not in names), None)
    if missing is not None:
        raise DataError(f"{root / 'image_class_labels.txt'} has no image of class id {missing} (ids run 1..{k})")
    return [names[c] for c in range(1, k + 1)]
