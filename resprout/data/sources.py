"""Data sources: small image datasets held in memory as uint8 tensors.

A *source* turns a name (and, for files on disk, a path) into a raw :class:`Dataset` with its full train and test
splits (and a validation split if the source has one); :func:`prepare` then derives the dataset a run trains on:
a seeded ``per_class`` subset, a carved validation split, a common image size and channel count.

Built-in sources (see :func:`available_sources`): ``digits`` (scikit-learn's 8x8 digits, offline),
``fashion-mnist`` and ``mnist`` (IDX files), ``cifar10`` and ``cifar100`` (the python-pickle layouts),
``imagefolder`` (class-per-folder trees read with Pillow) and ``synthetic`` (for tests). More can be added with
:func:`register_source`.

Seeded choices (the fixed test splits, the validation carve and the ``per_class`` subset) rank the images of each
class by a key drawn from numpy's PCG64 bit stream, which numpy keeps identical across versions and platforms, so a
given ``data_seed`` selects the same images everywhere. The ``per_class`` subsets are nested: with the same seed,
``per_class=10`` is a subset of ``per_class=20``.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from resprout.errors import ConfigError, DataError

from . import readers

__all__ = [
    "Dataset",
    "Split",
    "available_sources",
    "channel_stats",
    "load_source",
    "prepare",
    "register_source",
]

# Salts that keep the seeded choices independent of each other.
_SALT_TEST = 0x7E57_5E7
_SALT_VAL = 0x0A11_DA7E
_SALT_SUBSET = 0x5B_5E7
_FIXED_TEST_FRACTION = 0.2
_FIXED_TEST_SEED = 0


# ---------------------------------------------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------------------------------------------


@dataclass(repr=False, eq=False)
class Split:
    """Images and labels of one split: ``images`` uint8 (N, C, H, W) contiguous, ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise TypeError(f"Split.images must be a uint8 tensor of shape (N, C, H, W), got {_describe(self.images)}")
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise TypeError(f"Split.labels must be an int64 tensor of shape (N,), got {_describe(self.labels)}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(f"Split has {self.images.shape[0]} images but {self.labels.shape[0]} labels")
        self.images = self.images.contiguous()
        self.labels = self.labels.contiguous()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self, num_classes: int) -> list[int]:
        """How many images each class has."""
        return torch.bincount(self.labels, minlength=num_classes).tolist()

    def __repr__(self) -> str:
        return f"Split(images={tuple(self.images.shape)} uint8, labels={len(self)})"


@dataclass(repr=False, eq=False)
class Dataset:
    """A dataset in memory. ``classes[i]`` is the name of label ``i``; ``val`` is None if there is no val split."""

    name: str
    train: Split
    test: Split
    val: Split | None
    classes: list[str]

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        if not self.classes:
            raise DataError(f"data source {self.name!r} has no classes")
        shape = tuple(self.train.images.shape[1:])
        for split_name, split in self.splits().items():
            if tuple(split.images.shape[1:]) != shape:
                raise DataError(f"data source {self.name!r}: {split_name} images are "
                                f"{tuple(split.images.shape[1:])} but train images are {shape}")
            if len(split) and (int(split.labels.min()) < 0 or int(split.labels.max()) >= len(self.classes)):
                raise DataError(f"data source {self.name!r}: {split_name} labels must be 0..{len(self.classes) - 1}, "
                                f"found {int(split.labels.min())}..{int(split.labels.max())}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def splits(self) -> dict[str, Split]:
        """The splits that exist, by name: train, (val,) test."""
        out = {"train": self.train}
        if self.val is not None:
            out["val"] = self.val
        out["test"] = self.test
        return out

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits().items())
        return f"Dataset({self.name!r}, {sizes}, input_shape={self.input_shape}, num_classes={self.num_classes})"


def channel_stats(split: Split) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) standard deviation of ``split.images / 255``, computed exactly."""
    n, c, h, w = split.images.shape
    if n == 0:
        raise DataError("cannot compute channel statistics of an empty split")
    values = torch.arange(256, dtype=torch.int64).tolist()
    count = n * h * w
    means, stds = [], []
    for i in range(c):
        # A histogram of the 256 gray levels gives exact integer sums; var * count^2 = count*sum(x^2) - sum(x)^2.
        hist = torch.bincount(split.images[:, i].reshape(-1), minlength=256).tolist()
        total = sum(v * m for v, m in zip(values, hist))
        total_sq = sum(v * v * m for v, m in zip(values, hist))
        means.append(total / count / 255.0)
        stds.append(math.sqrt(max(count * total_sq - total * total, 0)) / count / 255.0)
    return means, stds


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------

SourceFn = Callable[..., Dataset]
_F = TypeVar("_F", bound=SourceFn)
_SOURCES: dict[str, SourceFn] = {}


def _canonical(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def register_source(name: str, *, replace: bool = False) -> Callable[[_F], _F]:
    """Register a data source under ``name`` (decorator).

    The function returns a :class:`Dataset`. If it has a parameter called ``path``, it receives the data path
    (``None`` when the user gave none); its other keyword parameters are the source's options, and
    :func:`load_source` refuses options it does not declare (unless it takes ``**options``)::

        @register_source("my-data")
        def my_data(path, *, size=32):
            ...
    """
    key = _canonical(name)
    if not key:
        raise ValueError("a data source needs a non-empty name")

    def deco(fn: _F) -> _F:
        if key in _SOURCES and not replace and _SOURCES[key] is not fn:
            raise ValueError(f"data source {key!r} is already registered (pass replace=True to replace it)")
        _SOURCES[key] = fn
        return fn

    return deco


def available_sources() -> list[str]:
    """The names of the registered data sources, sorted."""
    return sorted(_SOURCES)


def load_source(name: str, path: str | os.PathLike | None = None, **options: Any) -> Dataset:
    """The raw, full dataset of source ``name`` (see :func:`available_sources`).

    ``path`` is the data directory for sources read from disk; ``options`` are the source's own options (e.g.
    ``labels="coarse"`` for cifar100). An unknown source or an option the source does not take is a ConfigError.
    """
    key = _canonical(name)
    fn = _SOURCES.get(key)
    if fn is None:
        raise ConfigError(f"unknown data source {name!r}; allowed: {', '.join(available_sources())}")
    params = inspect.signature(fn).parameters
    takes_path = "path" in params
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [n for n, p in params.items() if n != "path"
               and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    if not takes_any:
        for opt in options:
            if opt not in allowed:
                takes = f"it takes: {', '.join(allowed)}" if allowed else "it takes no options"
                raise ConfigError(f"data source {key!r} does not take option {opt!r}; {takes}")
    if path is not None and not takes_path:
        raise ConfigError(f"data source {key!r} does not read files, so it takes no data_path (got {str(path)!r})")
    kwargs = dict(options)
    if takes_path:
        kwargs["path"] = path
    ds = fn(**kwargs)
    if not isinstance(ds, Dataset):
        raise TypeError(f"data source {key!r} returned {type(ds).__name__}, expected a Dataset")
    return ds


# ---------------------------------------------------------------------------------------------------------------
# Seeded, stratified choices
# ---------------------------------------------------------------------------------------------------------------


def _rank_keys(n: int, seed: int, salt: int) -> np.ndarray:
    """``n`` random 64-bit keys from PCG64 (a bit stream numpy keeps stable across versions)."""
    bitgen = np.random.PCG64(np.random.SeedSequence([int(seed), int(salt)]))
    return bitgen.random_raw(n) if n else np.zeros(0, dtype=np.uint64)


def _by_class(labels: np.ndarray, keys: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """For each class, the indices of its images ordered by their random key."""
    order = np.lexsort((np.arange(len(labels)), keys, labels))  # by label, then key, then index
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    return [order[bounds[c]:bounds[c + 1]] for c in range(num_classes)]


def _stratified_fraction(labels: np.ndarray, num_classes: int, fraction: float, seed: int,
                         salt: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Split indices into (kept, taken): about ``fraction`` of each class is taken, at least one image, and at
    least one is kept. Also returns (class, count) for every present class too small for that (fewer than 2)."""
    groups = _by_class(labels, _rank_keys(len(labels), seed, salt), num_classes)
    taken, too_few = [], []
    for c, idx in enumerate(groups):
        n = len(idx)
        if n == 0:
            continue
        if n < 2:
            too_few.append((c, n))
            continue
        k = min(max(1, int(math.floor(fraction * n + 0.5))), n - 1)
        taken.append(idx[:k])
    taken_idx = np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[taken_idx] = False
    return np.flatnonzero(mask), taken_idx, too_few


def _fixed_test_split(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """The fixed stratified 20% test split (seed 0) of sources without an official one."""
    return _stratified_fraction(labels, num_classes, _FIXED_TEST_FRACTION, _FIXED_TEST_SEED, _SALT_TEST)


# ---------------------------------------------------------------------------------------------------------------
# prepare()
# ---------------------------------------------------------------------------------------------------------------


def _check_int(key: str, value: Any, lo: int, *, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"bad value for {key}: {value!r} (must be an integer >= {lo})")
    return int(value)


def prepare(ds: Dataset, *, per_class: int | None = None, val_split: float = 0.0, data_seed: int = 0,
            image_size: int | None = None, channels: int | None = None, fit: str = "auto",
            test_per_class: int | None = None) -> Dataset:
    """The dataset a run trains on, derived from a raw one; ``ds`` is not changed and shares no tensor with it.

    * validation: the source's own val split is kept; otherwise ``0 < val_split < 1`` carves a stratified,
      seeded (``data_seed``) val split from the full training set, at least one image per class;
    * ``per_class=N``: exactly N seeded (``data_seed``) training images per class, from what is left of train;
    * ``image_size=S``: with ``fit="auto"``, images that fit in S x S are zero-padded centered (the classic
      28 -> 32), others are resized with antialiased bilinear interpolation (once, in float, rounded back to
      uint8); ``fit="resize"`` always resizes (e.g. 8 -> 32 upsampling), ``fit="pad"`` always pads;
    * ``channels``: 3 on grayscale repeats the channel; 1 on RGB takes the luminance (0.299, 0.587, 0.114).

    * ``test_per_class=N``: a fixed subset of N test images per class (for quick benchmarks; seeded by a constant,
      not by ``data_seed``, so that every run compared sees the same test images). By default every run of every
      method sees the whole test split.
    """
    test_per_class = _check_int("test_per_class", test_per_class, 1)
    per_class = _check_int("per_class", per_class, 1)
    data_seed = _check_int("data_seed", data_seed, 0, optional=False)  # type: ignore[assignment]
    image_size = _check_int("image_size", image_size, 1)
    if fit not in ("auto", "pad", "resize"):
        raise ConfigError(f"bad value for fit: {fit!r} (allowed: auto, pad, resize)")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise ConfigError(f"bad value for channels: {channels!r} (allowed: 1, 3)")
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) or not 0.0 <= val_split < 1.0:
        raise ConfigError(f"bad value for val_split: {val_split!r} (must be >= 0 and < 1)")
    if not isinstance(ds, Dataset):
        raise TypeError(f"prepare() needs a Dataset, got {type(ds).__name__}")

    k = ds.num_classes
    labels = ds.train.labels.numpy()
    train_idx: np.ndarray | None = None  # None: the whole of train
    val_from_train: np.ndarray | None = None
    if ds.val is None and val_split > 0.0:
        train_idx, val_from_train, too_few = _stratified_fraction(labels, k, float(val_split), data_seed, _SALT_VAL)
        if too_few:
            c, n = too_few[0]
            raise DataError(f"val_split={val_split}: class {ds.classes[c]!r} has only {n} training image, "
                            f"cannot carve a validation image from it and keep one for training")
    if per_class is not None:
        pool = np.arange(len(labels)) if train_idx is None else train_idx
        groups = _by_class(labels[pool], _rank_keys(len(pool), data_seed, _SALT_SUBSET), k)
        for c, idx in enumerate(groups):
            if len(idx) < per_class:
                after = " after carving the validation split" if val_from_train is not None else ""
                raise DataError(f"per_class={per_class}: class {ds.classes[c]!r} has only {len(idx)} training "
                                f"images{after}")
        train_idx = np.sort(pool[np.concatenate([idx[:per_class] for idx in groups])])

    size = None if image_size is None else (image_size, image_size)

    def derive(split: Split, idx: np.ndarray | None) -> Split:
        images, lab = split.images, split.labels
        if idx is not None:
            t = torch.from_numpy(idx.astype(np.int64))
            images, lab = images.index_select(0, t), lab.index_select(0, t)
        new_images = _transform(images, size, channels, fit)
        if new_images is split.images:
            new_images = split.images.clone(memory_format=torch.contiguous_format)
        new_labels = lab.clone() if lab is split.labels else lab
        return Split(new_images, new_labels)

    train = derive(ds.train, train_idx)
    if ds.val is not None:
        val: Split | None = derive(ds.val, None)
    elif val_from_train is not None:
        val = derive(ds.train, val_from_train)
    else:
        val = None
    test_idx = None
    if test_per_class is not None:
        test_labels = ds.test.labels.numpy()
        groups = _by_class(test_labels, _rank_keys(len(test_labels), _FIXED_TEST_SEED, _SALT_TEST), k)
        test_idx = np.sort(np.concatenate([idx[:test_per_class] for idx in groups]))
    test = derive(ds.test, test_idx)
    return Dataset(name=ds.name, train=train, test=test, val=val, classes=list(ds.classes))


_LUMA = (0.299, 0.587, 0.114)


def _transform(images: torch.Tensor, size: tuple[int, int] | None, channels: int | None,
               fit: str = "auto") -> torch.Tensor:
    """Images converted to ``channels`` and brought to ``size`` (``fit="auto"``: pad if they fit, else resize);
    the input itself when nothing changes."""
    n, c, h, w = images.shape
    th, tw = size if size is not None else (h, w)
    tc = channels if channels is not None else c
    if (th, tw, tc) == (h, w, c):
        return images
    if tc != c and not (c == 1 and tc == 3) and not (c == 3 and tc == 1):
        raise DataError(f"cannot convert {c}-channel images to {tc} channels (only 1 <-> 3)")
    fits = th >= h and tw >= w
    if fit == "pad" and not fits:
        raise ConfigError(f"cannot pad {h}x{w} images to {th}x{tw}: they are larger (use fit='auto' or 'resize')")
    pad = fits and fit != "resize"
    luma = c == 3 and tc == 1
    out_c = 1 if (c == 1 or luma) else c
    out = torch.zeros((n, tc, th, tw), dtype=torch.uint8) if pad else torch.empty((n, tc, th, tw), dtype=torch.uint8)
    top, left = (th - h) // 2, (tw - w) // 2
    chunk = max(1, (1 << 22) // max(1, c * max(h * w, th * tw)))
    weights = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    for start in range(0, n, chunk):
        x: torch.Tensor = images[start:start + chunk]
        if luma or not pad:
            xf = x.to(torch.float32)
            if luma:
                xf = (xf * weights).sum(dim=1, keepdim=True)
            if not pad:
                xf = F.interpolate(xf, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
            x = xf.round_().clamp_(0, 255).to(torch.uint8)
        assert x.shape[1] == out_c
        if pad:
            out[start:start + chunk, :, top:top + h, left:left + w] = x  # broadcasts 1 -> 3 channels
        else:
            out[start:start + chunk] = x
    return out


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the built-in sources
# ---------------------------------------------------------------------------------------------------------------


def _make_split(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> Split:
    im = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images, np.uint8))
    lb = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(labels, np.int64))
    return Split(im.contiguous(), lb.to(torch.int64).contiguous())


def _option_int(source: str, key: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"data source {source!r}: bad value for option {key}: {value!r} "
                          f"(must be an integer >= {lo})")
    return int(value)


def _option_choice(source: str, key: str, value: Any, choices: tuple) -> Any:
    if isinstance(value, bool) or value not in choices:
        raise ConfigError(f"data source {source!r}: bad value for option {key}: {value!r} "
                          f"(allowed: {', '.join(map(str, choices))})")
    return value


def _env_dirs() -> list[Path]:
    env = os.environ.get("RESPROUT_DATA")
    return [Path(env).expanduser()] if env else []


def _user_path(source: str, path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p} does not exist (data_path of data source {source!r})")
    if not p.is_dir():
        raise DataError(f"{p} is not a folder (data_path of data source {source!r})")
    return p


# ---------------------------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------------------------


@register_source("digits")
def _digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn) with a fixed stratified 20%
    test split (seed 0, independent of data_seed)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.floor(np.asarray(d.images, dtype=np.float64) * (255.0 / 16.0) + 0.5)
    images = np.clip(images, 0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = np.asarray(d.target, dtype=np.int64)
    train_idx, test_idx, _ = _fixed_test_split(labels, 10)
    return Dataset(name="digits", train=_make_split(images[train_idx], labels[train_idx]),
                   test=_make_split(images[test_idx], labels[test_idx]), val=None,
                   classes=[str(i) for i in range(10)])


# ---------------------------------------------------------------------------------------------------------------
# MNIST-style IDX files
# ---------------------------------------------------------------------------------------------------------------

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
#: Where a source looks when neither data_path nor RESPROUT_DATA has its files (Debian's dataset packages).
SYSTEM_DATA_DIRS: dict[str, list[Path]] = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}
_HOW_TO_GET = {
    "fashion-mnist": "install them with 'apt-get install -y dataset-fashion-mnist' or pass data_path=DIR",
    "mnist": "put the four MNIST IDX files (optionally .gz) in a folder and pass data_path=DIR",
}


def _idx_files_in(folder: Path) -> dict[str, Path]:
    """The IDX files present in ``folder`` (the raw file preferred over its .gz)."""
    found = {}
    for base in IDX_FILES:
        for candidate in (folder / base, folder / f"{base}.gz"):
            if candidate.is_file():
                found[base] = candidate
                break
    return found


def _find_idx_dir(source: str, path: str | os.PathLike | None) -> dict[str, Path]:
    if path is not None:
        root = _user_path(source, path)
        candidates = [root, root / source]
    else:
        candidates = [d for env in _env_dirs() for d in (env / source, env)] + SYSTEM_DATA_DIRS.get(source, [])
    for folder in candidates:
        found = _idx_files_in(folder)
        if len(found) == len(IDX_FILES):
            return found
        if found:
            missing = [b for b in IDX_FILES if b not in found]
            raise DataError(f"{folder} has {len(found)} of the 4 IDX files of {source}: "
                            f"{folder / missing[0]}[.gz] is missing")
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    env_note = "" if path is not None or _env_dirs() else "; RESPROUT_DATA is not set"
    raise DataError(f"no {source} IDX files ({IDX_FILES[0]}[.gz], ...) found; looked in: {looked}{env_note}; "
                    f"{_HOW_TO_GET.get(source, 'pass data_path=DIR')}")


def _load_idx(source: str, path: str | os.PathLike | None, classes: list[str]) -> Dataset:
    files = _find_idx_dir(source, path)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img_file, lab_file = files[f"{prefix}-images-idx3-ubyte"], files[f"{prefix}-labels-idx1-ubyte"]
        images = readers.read_idx(img_file, 3)
        labels = readers.read_idx(lab_file, 1)
        if len(images) == 0:
            raise DataError(f"{img_file} has no images")
        if len(labels) != len(images):
            raise DataError(f"{lab_file} has {len(labels)} labels but {img_file} has {len(images)} images")
        if len(labels) and int(labels.max()) >= len(classes):
            raise DataError(f"{lab_file} has label {int(labels.max())}; labels must be 0..{len(classes) - 1}")
        n, h, w = images.shape
        splits[split] = _make_split(images.reshape(n, 1, h, w), labels.astype(np.int64))
    if splits["train"].images.shape[1:] != splits["test"].images.shape[1:]:
        raise DataError(f"{files['t10k-images-idx3-ubyte']} has images of "
                        f"{tuple(splits['test'].images.shape[2:])} but {files['train-images-idx3-ubyte']} has "
                        f"{tuple(splits['train'].images.shape[2:])}")
    return Dataset(name=source, train=splits["train"], test=splits["test"], val=None, classes=classes)


@register_source("fashion-mnist")
def _fashion_mnist(path: str | os.PathLike | None = None) -> Dataset:
    """Fashion-MNIST (60000 train, 10000 test, 28x28 grayscale) from IDX files."""
    return _load_idx("fashion-mnist", path, list(FASHION_MNIST_CLASSES))


@register_source("mnist")
def _mnist(path: str | os.PathLike | None = None) -> Dataset:
    """MNIST (60000 train, 10000 test, 28x28 grayscale) from IDX files."""
    return _load_idx("mnist", path, [str(i) for i in range(10)])


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickle layouts)
# ---------------------------------------------------------------------------------------------------------------

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
        root = _user_path(source, path)
        candidates = [root, root / layout]
    else:
        candidates = [d for env in _env_dirs() for d in (env / layout, env / source / layout, env / source, env)]
    for folder in candidates:
        if (folder / marker).exists():
            return folder
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    env_note = "" if path is not None or _env_dirs() else "; RESPROUT_DATA is not set"
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
    return Dataset(name=source, train=_make_split(train_x.reshape(-1, 3, 32, 32), train_y),
                   test=_make_split(test_x.reshape(-1, 3, 32, 32), test_y), val=None, classes=classes)


@register_source("cifar10")
def _cifar10(path: str | os.PathLike | None = None) -> Dataset:
    """CIFAR-10 from ``cifar-10-batches-py/`` (``path`` is that folder or its parent)."""
    return _load_cifar("cifar10", path, "labels", "label_names")


@register_source("cifar100")
def _cifar100(path: str | os.PathLike | None = None, *, labels: str = "fine") -> Dataset:
    """CIFAR-100 from ``cifar-100-python/`` (``path`` is that folder or its parent); ``labels``: fine (100
    classes) or coarse (20 superclasses)."""
    kind = _option_choice("cifar100", "labels", labels, ("fine", "coarse"))
    return _load_cifar("cifar100", path, f"{kind}_labels", f"{kind}_label_names")


# ---------------------------------------------------------------------------------------------------------------
# imagefolder
# ---------------------------------------------------------------------------------------------------------------

_SPLIT_NAMES = ("train", "val", "test")


@register_source("imagefolder")
def _imagefolder(path: str | os.PathLike | None = None, *, image_size: int | None = None,
                 channels: int = 3) -> Dataset:
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
    size = None if image_size is None else _option_int("imagefolder", "image_size", image_size, 1)
    ch = _option_choice("imagefolder", "channels", channels, (1, 3))
    root = _user_path("imagefolder", path)
    if (root / "train").is_dir() or (root / "test").is_dir():
        files, classes = _layout_split_folders(root)
    elif any((root / f"{s}.txt").exists() for s in _SPLIT_NAMES):
        files, classes = _layout_split_lists(root)
    else:
        files, classes = _layout_single_tree(root)
    return _read_image_splits(files, classes, mode="L" if ch == 1 else "RGB", size=size)


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
        file = root / rel
        if not file.is_file():
            raise DataError(f"{where}: {file} does not exist")
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
    train_idx, test_idx, too_few = _fixed_test_split(labels, len(classes))
    if too_few:
        c, n = too_few[0]
        raise DataError(f"{root / classes[c]} has only {n} image; a single tree is split 80/20 into train and test, "
                        f"which needs at least 2 images per class (or give train.txt and test.txt)")
    return {"train": [all_files[i] for i in train_idx], "test": [all_files[i] for i in test_idx]}, classes


def _read_image_splits(files: dict[str, list[tuple[Path, int]]], classes: list[str], *, mode: str,
                       size: int | None) -> Dataset:
    first: tuple[Path, tuple[int, int]] | None = None
    splits: dict[str, Split] = {}
    for s in _SPLIT_NAMES:
        if s not in files:
            continue
        arrays = []
        for file, _ in files[s]:
            arr = readers.read_image(file, mode, size)
            hw = (int(arr.shape[0]), int(arr.shape[1]))
            if first is None:
                first = (file, hw)
            elif hw != first[1]:
                raise DataError(f"images differ in size: {first[0]} is {first[1][1]}x{first[1][0]} but {file} is "
                                f"{hw[1]}x{hw[0]}; pass the option image_size=S to resize them all to SxS")
            arrays.append(arr)
        stacked = np.stack(arrays)
        stacked = stacked[:, None] if mode == "L" else stacked.transpose(0, 3, 1, 2)
        labels = np.array([lab for _, lab in files[s]], dtype=np.int64)
        splits[s] = _make_split(np.ascontiguousarray(stacked), labels)
    return Dataset(name="imagefolder", train=splits["train"], test=splits["test"], val=splits.get("val"),
                   classes=classes)


# ---------------------------------------------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------------------------------------------

# The class signal lives on a coarse 4x4 grid (bilinearly upsampled to the image size): each class has a random
# prototype there, and every image adds its own coarse noise (which sets how separable the classes are, whatever
# the image size) and per-pixel noise. Values are in gray levels around 128.
_SYNTH_GRID = 4
_SYNTH_SIGNAL = 24.0
_SYNTH_COARSE_NOISE = 28.0
_SYNTH_PIXEL_NOISE = 16.0


@register_source("synthetic")
def _synthetic(*, num_classes: int = 10, n_train: int = 500, n_test: int = 200, image_size: int = 8,
               channels: int = 1, seed: int = 0) -> Dataset:
    """Random class prototypes plus noise, deterministic from ``seed``: learnable by a small CNN within a couple
    of epochs, but too noisy for 100%. Classes are balanced (up to one image); the test set does not depend on
    ``n_train`` and neither split depends on the other's size."""
    k = _option_int("synthetic", "num_classes", num_classes, 2)
    n_train = _option_int("synthetic", "n_train", n_train, k)
    n_test = _option_int("synthetic", "n_test", n_test, 1)
    s = _option_int("synthetic", "image_size", image_size, 2)
    c = _option_choice("synthetic", "channels", channels, (1, 3))
    seed = _option_int("synthetic", "seed", seed, 0)
    proto_ss, train_ss, test_ss = np.random.SeedSequence([seed, 0x5F17]).spawn(3)
    g = min(_SYNTH_GRID, s)
    # Same separability for 1 and 3 channels: the signal per channel shrinks as the channels add up.
    signal = _SYNTH_SIGNAL / math.sqrt(c)
    prototypes = signal * np.random.default_rng(proto_ss).standard_normal((k, c, g, g))

    def draw(ss: np.random.SeedSequence, n: int) -> Split:
        rng = np.random.default_rng(ss)
        labels = rng.permutation(np.arange(n) % k)
        coarse = prototypes[labels] + _SYNTH_COARSE_NOISE * rng.standard_normal((n, c, g, g))
        fine = F.interpolate(torch.from_numpy(coarse.astype(np.float32)), size=(s, s), mode="bilinear",
                             align_corners=False).numpy()
        images = 128.0 + fine + _SYNTH_PIXEL_NOISE * rng.standard_normal((n, c, s, s))
        return _make_split(np.clip(np.rint(images), 0, 255).astype(np.uint8), labels.astype(np.int64))

    return Dataset(name="synthetic", train=draw(train_ss, n_train), test=draw(test_ss, n_test), val=None,
                   classes=[str(i) for i in range(k)])
