"""The ``flower102`` source: Oxford 102 Category Flower Dataset (Nilsback and Zisserman 2008), official layout.

One folder holds ``jpg/image_00001.jpg`` ... ``jpg/image_08189.jpg``, ``imagelabels.mat`` (``labels``: the class,
1..102, of image i at position i) and ``setid.mat`` (``trnid``, ``valid``, ``tstid``: the 1-based image numbers of
each split). 1,020 train, 1,020 validation and 6,149 test images. The official files name no classes: class k is
called ``"k"``.
"""

from __future__ import annotations

import os


from resprout.data.files import FileDataset, FileSplit
from resprout.data.readers import listed_file
from resprout.data.sources.registry import register_source
from resprout.data.sources._official import (DECODE_OPTIONS, find_root, load_mat, mat_integers,
                                             required)
from resprout.errors import DataError

SPLIT_KEYS = (("train", "trnid"), ("val", "valid"), ("test", "tstid"))


@register_source("flower102", options=DECODE_OPTIONS)
def _flower102(path: str | os.PathLike | None = None, *, image_size: int | None = None,
               channels: int = 3) -> FileDataset:
    """Flower-102 (``path``: the folder of ``jpg/``, ``imagelabels.mat`` and ``setid.mat``): the official
    train/val/test split."""
    root = find_root("flower102", path, "imagelabels.mat", ("flowers-102", "102flowers"),
                     "download 102flowers.tgz, imagelabels.mat and setid.mat (the Oxford VGG flowers page) into one "
                     "folder and pass data_path=DIR")
    labels_file, setid_file = required(root, "imagelabels.mat", "Flower-102"), required(root, "setid.mat", "Flower-102")
    labels = mat_integers(load_mat(labels_file, ("labels",))["labels"], labels_file, "labels")
    if int(labels.min()) < 1:
        raise DataError(f"{labels_file}: 'labels' has class {int(labels.min())}; classes are numbered from 1")
    k = int(labels.max())
    sets = load_mat(setid_file, tuple(key for _, key in SPLIT_KEYS))
    folder = required(root, "jpg", "Flower-102")
    owner: dict[int, str] = {}
    splits = {}
    for split, key in SPLIT_KEYS:
        ids = mat_integers(sets[key], setid_file, key)
        bad = ids[(ids < 1) | (ids > len(labels))]
        if bad.size:
            raise DataError(f"{setid_file}: {key!r} has image {int(bad[0])}, but {labels_file} labels images "
                            f"1..{len(labels)}")
        for i in ids.tolist():
            if i in owner:
                raise DataError(f"{setid_file}: image {i} is in both {owner[i]!r} and {key!r}")
            owner[i] = key
        files = [listed_file(folder, f"image_{i:05d}.jpg", f"{setid_file} {key!r} image {i}") for i in ids.tolist()]
        splits[split] = FileSplit(files, labels[ids - 1] - 1)
    return FileDataset("flower102", train=splits["train"], test=splits["test"], val=splits["val"],
                       classes=[str(c) for c in range(1, k + 1)], channels=channels, image_size=image_size)


