"""Shared by the readers of the official dataset layouts (CUB-200-2011, Flower-102, FGVC-Aircraft, MIT67, Stanford
Dogs): finding the dataset folder, reading ``<id> <value>`` text lists and MATLAB ``.mat`` files, checking the
listed image files. Every problem is one :class:`~resprout.errors.DataError` line naming the file (and line)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from resprout.data import readers
from resprout.data.sources._paths import env_dirs, user_path
from resprout.errors import DataError
from resprout.options import Spec

#: the options every source of image files takes: how :func:`resprout.data.files.decode` reads the images
DECODE_OPTIONS = {
    "image_size": Spec(int, min=1, allow_none=True, help="resize every image to S x S while reading (the fixed-size "
                       "path of augment=crop+flip and the like; augment=imagenet keeps the aspect ratio instead)"),
    "channels": Spec(int, choices=(1, 3), help="read images as 3-channel RGB or 1-channel grayscale"),
}


def find_root(source: str, path: str | os.PathLike | None, marker: str, layouts: tuple[str, ...], how: str) -> Path:
    """The folder holding ``marker`` (a file or folder of the official layout): ``path`` itself or one of the
    ``layouts`` folders inside it; without ``path``, the same under ``$RESPROUT_DATA`` (and
    ``$RESPROUT_DATA/<source>``)."""
    if path is not None:
        root = user_path(source, path)
        candidates = [root, *(root / sub for sub in layouts)]
    else:
        candidates = [d for env in env_dirs() for base in (env, env / source) for d in (base, *(base / s for s in
                                                                                             layouts))]
    for folder in candidates:
        if (folder / marker).exists():
            return folder
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    env_note = "" if path is not None or env_dirs() else "; RESPROUT_DATA is not set"
    raise DataError(f"no {source} data ({marker}) found; looked in: {looked}{env_note}; {how}")


def required(folder: Path, name: str, source: str) -> Path:
    """``folder / name``, which must exist (one line naming it and the layout otherwise)."""
    p = folder / name
    if not p.exists():
        raise DataError(f"{p} is missing (the official {source} layout has it beside {_listing(folder)})")
    return p


def _listing(folder: Path) -> str:
    try:
        names = sorted(e.name for e in folder.iterdir() if not e.name.startswith("."))
    except OSError:
        return "nothing readable"
    return ", ".join(names[:6]) + (" ..." if len(names) > 6 else "") if names else "nothing"


def read_lines(file: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines of a text list."""
    readers.check_regular_file(file)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{file} cannot be read: {readers.one_line(e)}") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_table(file: Path, what: str) -> dict[str, str]:
    """``{key: value}`` of a list of ``<key> <value>`` lines (the value may hold spaces); a line without a value
    or a repeated key is an error naming the line. ``what`` describes a line, e.g. ``"<image id> <class id>"``."""
    out: dict[str, str] = {}
    lines = read_lines(file)
    if not lines:
        raise DataError(f"{file} is empty (expected lines of {what})")
    for n, line in lines:
        key, _, value = line.partition(" ")
        value = value.strip()
        if not value:
            raise DataError(f"{file} line {n}: {line!r} is not {what}")
        if key in out:
            raise DataError(f"{file} line {n}: {key} is listed twice")
        out[key] = value
    return out


def as_int(value: str, file: Path, key: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{file}: {what} of {key} is {value!r}, not an integer") from None


def load_mat(file: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of a MATLAB (v4-v7.2) ``.mat`` file, read with scipy."""
    readers.check_regular_file(file)
    from scipy.io import loadmat  # scipy comes with scikit-learn; imported only for these files

    try:
        mat = loadmat(str(file))
    except NotImplementedError:  # scipy's answer to an HDF5 (v7.3) file
        raise DataError(f"{file} is a MATLAB v7.3 (HDF5) file; save it as -v7 (the official files are)") from None
    except Exception as e:  # noqa: BLE001  (truncated, not a .mat file, ...: one line naming the file)
        raise DataError(f"{file} is not a readable .mat file: {readers.one_line(e) or type(e).__name__}") from None
    missing = [k for k in keys if k not in mat]
    if missing:
        have = ", ".join(sorted(k for k in mat if not k.startswith("__"))) or "nothing"
        raise DataError(f"{file} has no {missing[0]!r} entry (it has: {have})")
    return {k: mat[k] for k in keys}


def mat_integers(arr: Any, file: Path, key: str) -> np.ndarray:
    """A .mat numeric array (any shape of one row or column) as int64, refusing non-integer values."""
    a = np.asarray(arr)
    if a.dtype.kind not in "iuf" or a.size == 0 or sum(d > 1 for d in a.shape) > 1:
        raise DataError(f"{file}: {key!r} is an array of shape {a.shape} and dtype {a.dtype}, expected one row or "
                        f"column of integers")
    flat = a.reshape(-1)
    if a.dtype.kind == "f" and not np.all(flat == np.round(flat)):
        raise DataError(f"{file}: {key!r} holds non-integer values")
    return flat.astype(np.int64)


def mat_strings(arr: Any, file: Path, key: str) -> list[str]:
    """A .mat cell array (or char matrix) of strings as a list of str."""
    a = np.asarray(arr)
    out: list[str] = []
    if a.dtype.kind == "U":
        return [str(s).strip() for s in a.reshape(-1)]
    if a.dtype.kind != "O":
        raise DataError(f"{file}: {key!r} is an array of dtype {a.dtype}, expected a cell array of strings")
    for cell in a.reshape(-1):
        c = np.asarray(cell).reshape(-1)
        if c.size != 1 or c.dtype.kind != "U":
            raise DataError(f"{file}: {key!r} has an entry that is not a string ({c.dtype}, {c.size} items)")
        out.append(str(c[0]).strip())
    return out


def check_labels(labels: np.ndarray, k: int, file: Path, key: str) -> None:
    """1-based class ids in 1..k."""
    if labels.size and (int(labels.min()) < 1 or int(labels.max()) > k):
        raise DataError(f"{file}: {key!r} has class ids {int(labels.min())}..{int(labels.max())}, expected 1..{k}")
