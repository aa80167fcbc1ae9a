"""The ``cifar10`` and ``cifar100`` sources: the python-pickle layouts ``cifar-10-batches-py/`` and
``cifar-100-python/``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from resprout.data import readers
from resprout.data.dataset import Dataset, make_split
from resprout.data.sources.registry import register_source
from resprout.data.sources._paths import env_dirs, user_path
from resprout.errors import DataError
from resprout.options import Spec

_CIFAR = {
    # source: (layout folder, train files, test file, meta file, archive name)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "cifar-100-python.tar.gz"),
}


def _find_cifar_dir(source: str, path: str | os.PathLike | None) -> Path:
    layout, train_files, _, _, archive = _CIFAR[source]
    marker = train_files[0]
    if path is not None:
        root = user_path(source, path)
        candidates = [root, root / layout]
    else:
        candidates = [d for env in env_dirs() for d in (env / layout, env / source / layout, env / source, env)]
    for folder in candidates:
        if (folder / marker).exists():
            return folder
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    env_note = "" if path is not None or env_dirs() else "; RESPROUT_DATA is not set"
    raise DataError(f"no {source} data ({layout}/{marker}) found; looked in: {looked}{env_note}; extract {archive} "
                    f"(from the CIFAR web page) and pass data_path=DIR")


def _cifar_entry(d: dict[str, Any], key: str, file: Path) -> Any:
    if key not in d:
        raise DataError(f"{file} has no {key!r} entry (it has: {', '.join(sorted(d)) or 'nothing'})")
    return d[key]


def _cifar_batch(file: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = readers.load_cifar_pickle(file)
    data = _cifar_entry(d, "data", file)
    labels = _cifar_entry(d, label_key, file)
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{file}: 'data' is {_shape_of(data)}, expected an array of shape (N, 3072)")
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or (data.size and (int(data.min()) < 0 or int(data.max()) > 255)):
            raise DataError(f"{file}: 'data' has dtype {data.dtype}, expected uint8 values 0..255")
        data = data.astype(np.uint8)
    try:
        lab = np.asarray(labels)
    except Exception:
        lab = np.asarray([], dtype=object)
    if lab.ndim != 1 or lab.dtype.kind not in "iu":
        raise DataError(f"{file}: {label_key!r} is {_shape_of(labels)}, expected a list of integers")
    if len(lab) != len(data):
        raise DataError(f"{file} has {len(lab)} {label_key} but {len(data)} images")
    if len(lab) and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
        raise DataError(f"{file}: {label_key!r} has values {int(lab.min())}..{int(lab.max())}, "
                        f"expected 0..{num_classes - 1}")
    return data, lab.astype(np.int64)


def _shape_of(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"an array of shape {x.shape} and dtype {x.dtype}"
    if isinstance(x, (list, tuple)):
        return f"a {type(x).__name__} of {len(x)} items"
    return f"a {type(x).__name__}"


def _decode_names(names: Any, file: Path, key: str) -> list[str]:
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{file}: {key!r} is {_shape_of(names)}, expected a list of class names")
    out = []
    for n in names:
        if isinstance(n, bytes):
            try:
                n = n.decode("utf-8")
            except UnicodeDecodeError:
                n = n.decode("latin-1")
        out.append(n)
    return out


def _load_cifar(source: str, path: str | os.PathLike | None, label_key: str, names_key: str) -> Dataset:
    layout, train_files, test_file, meta_file, _ = _CIFAR[source]
    folder = _find_cifar_dir(source, path)
    for f in [*train_files, test_file, meta_file]:
        if not (folder / f).is_file():
            raise DataError(f"{folder / f} is missing (the {layout} layout has {', '.join(train_files)}, "
                            f"{test_file} and {meta_file})")
    meta = readers.load_cifar_pickle(folder / meta_file)
    classes = _decode_names(_cifar_entry(meta, names_key, folder / meta_file), folder / meta_file, names_key)
    parts = [_cifar_batch(folder / f, label_key, len(classes)) for f in train_files]
    train_x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    train_y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    test_x, test_y = _cifar_batch(folder / test_file, label_key, len(classes))
    return Dataset(name=source, train=make_split(train_x.reshape(-1, 3, 32, 32), train_y),
                   test=make_split(test_x.reshape(-1, 3, 32, 32), test_y), val=None, classes=classes)


@register_source("cifar10")
def _cifar10(path: str | os.PathLike | None = None) -> Dataset:
    """CIFAR-10 from ``cifar-10-batches-py/`` (``path`` is that folder or its parent)."""
    return _load_cifar("cifar10", path, "labels", "label_names")


@register_source("cifar100", options={"labels": Spec(str, choices=("fine", "coarse"))})
def _cifar100(path: str | os.PathLike | None = None, *, labels: str = "fine") -> Dataset:
    """CIFAR-100 from ``cifar-100-python/`` (``path`` is that folder or its parent); ``labels``: fine (100
    classes) or coarse (20 superclasses)."""
    return _load_cifar("cifar100", path, f"{labels}_labels", f"{labels}_label_names")

