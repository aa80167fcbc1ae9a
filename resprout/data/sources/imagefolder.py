"""The ``imagefolder`` source: class-per-folder image trees read with Pillow, in one of three layouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from resprout.data import readers
from resprout.data.files import SPLIT_NAMES as _SPLIT_NAMES
from resprout.data.files import FileDataset, FileSplit
from resprout.data.sources.registry import register_source
from resprout.data.sources._paths import user_path
from resprout.data.stratify import fixed_test_split
from resprout.errors import ConfigError, DataError
from resprout.options import Spec


@register_source("imagefolder", options={"image_size": Spec(int, min=1, allow_none=True),
                                         "channels": Spec(int, choices=(1, 3))})
def _imagefolder(path: str | os.PathLike | None = None, *, image_size: int | None = None,
                 channels: int = 3) -> FileDataset:
    """Class-per-folder image trees, read with Pillow. Layouts, tried in this order:

    (a) ``root/train/<class>/*`` and ``root/test/<class>/*``, optional ``root/val/<class>/*``;
    (b) one ``root/<class>/*`` tree with split lists ``root/train.txt`` and ``root/test.txt`` (optional
        ``root/val.txt``), one relative path ``<class>/<file>`` per line;
    (c) one ``root/<class>/*`` tree without lists: a fixed stratified 20% test split (seed 0).

    ``image_size=S`` resizes every image to S x S (needed when the images differ in size); ``channels`` is 3
    (RGB, the default) or 1 (grayscale).
    """
    if path is None:
        raise ConfigError("data source 'imagefolder' needs data_path=DIR (a class-per-folder image tree)")
    root = user_path("imagefolder", path)
    if (root / "train").is_dir() or (root / "test").is_dir():
        files, classes = _layout_split_folders(root)
    elif any((root / f"{s}.txt").exists() for s in _SPLIT_NAMES):
        files, classes = _layout_split_lists(root)
    else:
        files, classes = _layout_single_tree(root)
    return FileDataset(name="imagefolder", train=FileSplit(*_unzip(files["train"])),
                       test=FileSplit(*_unzip(files["test"])),
                       val=FileSplit(*_unzip(files["val"])) if "val" in files else None, classes=classes,
                       channels=channels, image_size=image_size)


def _unzip(entries: list[tuple[Path, int]]) -> tuple[list[Path], list[int]]:
    return [f for f, _ in entries], [lab for _, lab in entries]


def _class_difference(a: set[str], b: set[str], a_name: str, b_name: str) -> str:
    parts = []
    if a - b:
        parts.append(f"only in {a_name}: {', '.join(sorted(a - b))}")
    if b - a:
        parts.append(f"only in {b_name}: {', '.join(sorted(b - a))}")
    return "; ".join(parts)


def _layout_split_folders(root: Path) -> tuple[dict[str, list[tuple[Path, int]]], list[str]]:
    for required in ("train", "test"):
        if not (root / required).is_dir():
            raise DataError(f"{root / required} is missing: a folder with train/ and test/ needs both "
                            f"(layout {root}/train/<class>/<image>, {root}/test/<class>/<image>)")
    trees = {s: readers.scan_class_tree(root / s) for s in _SPLIT_NAMES if (root / s).is_dir()}
    classes = sorted(trees["train"])
    if set(trees["test"]) != set(classes):
        diff = _class_difference(set(classes), set(trees["test"]), str(root / "train"), str(root / "test"))
        raise DataError(f"{root / 'train'} and {root / 'test'} have different class folders ({diff})")
    if "val" in trees and not set(trees["val"]) <= set(classes):
        extra = ", ".join(sorted(set(trees["val"]) - set(classes)))
        raise DataError(f"{root / 'val'} has class folders that {root / 'train'} lacks: {extra}")
    index = {c: i for i, c in enumerate(classes)}
    files = {s: [(p, index[c]) for c in sorted(tree) for p in tree[c]] for s, tree in trees.items()}
    return files, classes


def _read_split_list(root: Path, list_file: Path) -> list[tuple[Path, str]]:
    entries: list[tuple[Path, str]] = []
    seen: set[str] = set()
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{list_file} cannot be read: {readers.one_line(e)}") from None
    for lineno, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        rel = Path(entry.replace("\\", "/"))
        where = f"{list_file} line {lineno}"
        if rel.is_absolute() or ".." in rel.parts or len(rel.parts) < 2:
            raise DataError(f"{where}: {entry!r} is not a relative path <class>/<image> inside {root}")
        file = readers.listed_file(root, entry, where)
        if not readers.is_image_file(file.name):
            raise DataError(f"{where}: {file} is not an image file "
                            f"(allowed: {' '.join(readers.IMAGE_EXTENSIONS)})")
        key = rel.as_posix()
        if key in seen:
            raise DataError(f"{where}: {entry} is listed twice")
        seen.add(key)
        entries.append((file, rel.parts[0]))
    if not entries:
        raise DataError(f"{list_file} lists no images")
    return entries


def _layout_split_lists(root: Path) -> tuple[dict[str, list[tuple[Path, int]]], list[str]]:
    for required in ("train", "test"):
        if not (root / f"{required}.txt").is_file():
            raise DataError(f"{root / (required + '.txt')} is missing: split lists need both train.txt and test.txt")
    lists = {s: _read_split_list(root, root / f"{s}.txt") for s in _SPLIT_NAMES if (root / f"{s}.txt").is_file()}
    owner: dict[Path, str] = {}
    for s, entries in lists.items():
        for file, _ in entries:
            if file in owner:
                raise DataError(f"{file} is listed in both {root / (owner[file] + '.txt')} and {root / (s + '.txt')}")
            owner[file] = s
    classes = sorted({c for _, c in lists["train"]})
    test_classes = {c for _, c in lists["test"]}
    if test_classes != set(classes):
        diff = _class_difference(set(classes), test_classes, "train.txt", "test.txt")
        raise DataError(f"{root / 'train.txt'} and {root / 'test.txt'} cover different classes ({diff})")
    if "val" in lists:
        extra = {c for _, c in lists["val"]} - set(classes)
        if extra:
            raise DataError(f"{root / 'val.txt'} has classes that {root / 'train.txt'} lacks: "
                            f"{', '.join(sorted(extra))}")
    index = {c: i for i, c in enumerate(classes)}
    return {s: [(f, index[c]) for f, c in entries] for s, entries in lists.items()}, classes


def _layout_single_tree(root: Path) -> tuple[dict[str, list[tuple[Path, int]]], list[str]]:
    tree = readers.scan_class_tree(root)
    classes = sorted(tree)
    all_files = [(p, i) for i, c in enumerate(classes) for p in tree[c]]
    labels = np.array([lab for _, lab in all_files], dtype=np.int64)
    train_idx, test_idx, too_few = fixed_test_split(labels, len(classes))
    if too_few:
        c, n = too_few[0]
        raise DataError(f"{root / classes[c]} has only {n} image; a single tree is split 80/20 into train and test, "
                        f"which needs at least 2 images per class (or give train.txt and test.txt)")
    return {"train": [all_files[i] for i in train_idx], "test": [all_files[i] for i in test_idx]}, classes
