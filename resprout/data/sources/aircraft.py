"""The ``fgvc-aircraft`` source: FGVC-Aircraft 2013b (Maji et al. 2013) in its official layout.

``fgvc-aircraft-2013b/data/`` holds ``images/<image id>.jpg`` and, for each level of labels (``variant``: 100
classes, ``family``: 70, ``manufacturer``: 30), the class names (``variants.txt``, ``families.txt``,
``manufacturers.txt``, one per line) and one list per split, ``images_<level>_<split>.txt`` with lines
``<image id> <class name>`` (the name may hold spaces). 3,334 train, 3,333 validation and 3,333 test images.
"""

from __future__ import annotations

import os

import numpy as np

from resprout.data.files import FileDataset, FileSplit
from resprout.data.readers import listed_file
from resprout.data.sources.registry import register_source
from resprout.data.sources._official import (DECODE_OPTIONS, find_root, read_lines, read_table,
                                             required)
from resprout.errors import DataError
from resprout.options import Spec

NAMES = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}


@register_source("fgvc-aircraft", options={**DECODE_OPTIONS, "labels": Spec(str, choices=tuple(NAMES), help=(
    "which labels to train on: variant (100 classes), family (70) or manufacturer (30)"))})
def _fgvc_aircraft(path: str | os.PathLike | None = None, *, labels: str = "variant", image_size: int | None = None,
                   channels: int = 3) -> FileDataset:
    """FGVC-Aircraft (``path``: the ``data`` folder, ``fgvc-aircraft-2013b`` or its parent): the official
    train/val/test split; ``labels``: variant (100 classes, the default), family (70) or manufacturer (30)."""
    root = find_root("fgvc-aircraft", path, NAMES[labels], ("data", "fgvc-aircraft-2013b/data"),
                     "extract fgvc-aircraft-2013b.tar.gz (the FGVC-Aircraft page) and pass data_path=DIR")
    names_file = required(root, NAMES[labels], "FGVC-Aircraft")
    classes = [line for _, line in read_lines(names_file)]
    if len(set(classes)) != len(classes):
        twice = next(c for c in classes if classes.count(c) > 1)
        raise DataError(f"{names_file} names {twice!r} twice")
    index = {c: i for i, c in enumerate(classes)}
    folder = required(root, "images", "FGVC-Aircraft")
    owner: dict[str, str] = {}
    splits = {}
    for split in ("train", "val", "test"):
        lst = required(root, f"images_{labels}_{split}.txt", "FGVC-Aircraft")
        table = read_table(lst, "<image id> <class name>")
        files, cls = [], []
        for image_id, name in table.items():
            if name not in index:
                raise DataError(f"{lst}: image {image_id} has class {name!r}, which {names_file} does not name")
            if image_id in owner:
                raise DataError(f"image {image_id} is in both {owner[image_id]} and {lst}")
            owner[image_id] = str(lst)
            files.append(listed_file(folder, f"{image_id}.jpg", f"{lst} image {image_id}"))
            cls.append(index[name])
        splits[split] = FileSplit(files, np.array(cls, dtype=np.int64))
    return FileDataset("fgvc-aircraft", train=splits["train"], test=splits["test"], val=splits["val"],
                       classes=classes, channels=channels, image_size=image_size)
