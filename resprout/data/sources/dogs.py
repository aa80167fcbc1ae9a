"""The ``stanford-dogs`` source: Stanford Dogs (Khosla et al. 2011) in its official layout.

One folder holds ``Images/<wnid>-<breed>/<file>.jpg`` and the split lists ``train_list.mat`` and ``test_list.mat``,
each with ``file_list`` (a cell array of paths under ``Images/``) and ``labels`` (the class of each, 1..120).
12,000 train and 8,580 test images; no validation split. A class is named by its folder without the WordNet id
(``n02085620-Chihuahua`` is ``Chihuahua``).
"""

from __future__ import annotations

import os
from pathlib import Path

from resprout.data.files import FileDataset, FileSplit
from resprout.data.readers import listed_file
from resprout.data.sources.registry import register_source
from resprout.data.sources._official import (DECODE_OPTIONS, check_labels, find_root, load_mat,
                                             mat_integers, mat_strings, required)
from resprout.errors import DataError

LISTS = (("train", "train_list.mat"), ("test", "test_list.mat"))


@register_source("stanford-dogs", options=DECODE_OPTIONS)
def _stanford_dogs(path: str | os.PathLike | None = None, *, image_size: int | None = None,
                   channels: int = 3) -> FileDataset:
    """Stanford Dogs (``path``: the folder of ``Images/``, ``train_list.mat`` and ``test_list.mat``): the official
    train/test split."""
    root = find_root("stanford-dogs", path, "train_list.mat", ("stanford-dogs", "StanfordDogs"),
                     "extract images.tar and lists.tar (the Stanford Dogs page) into one folder and pass "
                     "data_path=DIR")
    folder = required(root, "Images", "Stanford Dogs")
    read = {}
    for split, name in LISTS:
        lst = required(root, name, "Stanford Dogs")
        mat = load_mat(lst, ("file_list", "labels"))
        files, labels = mat_strings(mat["file_list"], lst, "file_list"), mat_integers(mat["labels"], lst, "labels")
        if len(files) != len(labels):
            raise DataError(f"{lst} has {len(files)} files but {len(labels)} labels")
        if not files:
            raise DataError(f"{lst} lists no images")
        read[split] = (lst, files, labels)
    k = int(read["train"][2].max())
    names: dict[int, str] = {}
    splits = {}
    for split, (lst, files, labels) in read.items():
        check_labels(labels, k, lst, "labels")
        paths = []
        for i, (rel, c) in enumerate(zip(files, labels.tolist())):
            where = f"{lst} entry {i + 1}"
            parts = Path(rel.replace("\\", "/")).parts
            if len(parts) != 2:
                raise DataError(f"{where}: {rel!r} is not <breed folder>/<file>")
            if names.setdefault(c, parts[0]) != parts[0]:
                raise DataError(f"{where}: class {c} is in folder {parts[0]!r} but also in {names[c]!r}")
            paths.append(listed_file(folder, rel, where))
        splits[split] = FileSplit(paths, labels - 1)
    missing = next((c for c in range(1, k + 1) if c not in names), None)
    if missing is not None:
        raise DataError(f"{root / LISTS[0][1]}: no image has class {missing} (labels run 1..{k})")
    classes = [names[c].split("-", 1)[1] if "-" in names[c] else names[c] for c in range(1, k + 1)]
    return FileDataset("stanford-dogs", train=splits["train"], test=splits["test"], val=None, classes=classes,
                       channels=channels, image_size=image_size)
