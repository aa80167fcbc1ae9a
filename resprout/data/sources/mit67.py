"""The ``mit67`` source: MIT Indoor Scene Recognition, 67 categories (Quattoni and Torralba 2009), official layout.

One folder holds ``Images/<category>/<file>.jpg`` and the split lists ``TrainImages.txt`` and ``TestImages.txt``,
one ``<category>/<file>`` per line. 80 training and 20 test images per category: 5,360 and 1,340; no validation
split. Classes are the categories of ``TrainImages.txt``, sorted.
"""

from __future__ import annotations

import os
from pathlib import Path

from resprout.data.files import FileDataset, FileSplit
from resprout.data.readers import listed_file
from resprout.data.sources.registry import register_source
from resprout.data.sources._official import DECODE_OPTIONS, find_root, read_lines, required
from resprout.errors import DataError

LISTS = (("train", "TrainImages.txt"), ("test", "TestImages.txt"))


@register_source("mit67", options=DECODE_OPTIONS)
def _mit67(path: str | os.PathLike | None = None, *, image_size: int | None = None,
           channels: int = 3) -> FileDataset:
    """MIT67 (``path``: the folder of ``Images/``, ``TrainImages.txt`` and ``TestImages.txt``): the official
    train/test split."""
    root = find_root("mit67", path, "TrainImages.txt", ("indoorCVPR_09", "mit67"),
                     "extract indoorCVPR_09.tar and put TrainImages.txt and TestImages.txt beside Images/ (the MIT "
                     "indoor scenes page), then pass data_path=DIR")
    folder = required(root, "Images", "MIT67")
    entries: dict[str, list[tuple[Path, str]]] = {}
    owner: dict[str, str] = {}
    for split, name in LISTS:
        lst = required(root, name, "MIT67")
        out = []
        for n, line in read_lines(lst):
            rel = Path(line.replace("\\", "/"))
            if len(rel.parts) != 2:
                raise DataError(f"{lst} line {n}: {line!r} is not <category>/<file>")
            if line in owner:
                raise DataError(f"{lst} line {n}: {line} is already listed in {owner[line]}")
            owner[line] = name
            out.append((listed_file(folder, line, f"{lst} line {n}"), rel.parts[0]))
        if not out:
            raise DataError(f"{lst} lists no images")
        entries[split] = out
    classes = sorted({c for _, c in entries["train"]})
    extra = sorted({c for _, c in entries["test"]} - set(classes))
    if extra:
        raise DataError(f"{root / LISTS[1][1]} has category {extra[0]!r}, which {root / LISTS[0][1]} lacks")
    index = {c: i for i, c in enumerate(classes)}
    splits = {s: FileSplit([f for f, _ in e], [index[c] for _, c in e]) for s, e in entries.items()}
    return FileDataset("mit67", train=splits["train"], test=splits["test"], val=None, classes=classes,
                       channels=channels, image_size=image_size)
