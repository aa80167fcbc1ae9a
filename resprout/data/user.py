"""Data from the user's own code: a torch ``Dataset`` (or ``(images, labels)`` tensors) per split, held in memory
like every built-in source.

``resprout.train(train=..., test=..., val=...)`` calls :func:`user_dataset` once, before anything trains. Each
split is read completely, once, into uint8 tensors; from then on the run is exactly a built-in-source run:
``per_class``, ``val_split``, ``image_size``, ``channels``, seeded order, resprout's own batched augmentation
(``augment=crop+flip``) and exact resume all work.

What a split may be:

* a tuple ``(images, labels)`` of tensors or numpy arrays: images ``(N, C, H, W)`` (or ``(N, H, W)`` for one
  channel), labels ``(N,)`` integers;
* a ``torch.utils.data.TensorDataset`` of those two tensors;
* any map-style dataset (``len(ds)`` and ``ds[i] -> (image, label)``): a torchvision dataset with
  ``transform=ToTensor()``, say. An image is a tensor ``(C, H, W)`` or ``(H, W)``, or a PIL image.

Pixel values: uint8, or floats in [0, 1] that are whole multiples of 1/255 (what ``ToTensor()`` makes of 8-bit
images); both are read exactly. Anything else (normalized floats, 16-bit values) is refused in one line: resprout
normalizes with the training set's own per-channel statistics itself. Random transforms inside a dataset would be
drawn once and frozen, so leave augmentation to resprout's ``augment=`` key.

Class names come from the train dataset's ``classes`` attribute when it has one (torchvision's do), else they are
``0 .. K-1`` with K one more than the largest label of any split.

:func:`fingerprint` hashes the images, labels and class names of every split: a run stores it
(``data_options.fingerprint``) and refuses to continue on other data.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from resprout.data.dataset import Dataset, Split
from resprout.errors import ConfigError

USER_SOURCE = "user"
SPLITS = ("train", "val", "test")


def is_user_source(name: str) -> bool:
    """Whether a config's ``data`` names data passed from Python (``user`` or ``user:<label>``)."""
    return name == USER_SOURCE or name.startswith(USER_SOURCE + ":")


def user_dataset(train: Any, test: Any, val: Any = None, *, name: str = USER_SOURCE) -> Dataset:
    """A :class:`Dataset` from the user's splits (see the module docstring for what each may be)."""
    if train is None or test is None:
        missing = "train" if train is None else "test"
        raise ConfigError(f"data from Python code needs both train= and test= splits ({missing}= is missing)")
    splits = {"train": _split("train", train), "test": _split("test", test)}
    if val is not None:
        splits["val"] = _split("val", val)
    shape = tuple(splits["train"].images.shape[1:])
    for split_name, split in splits.items():
        if len(split) == 0:
            raise ConfigError(f"{split_name}= has no images")
        if tuple(split.images.shape[1:]) != shape:
            raise ConfigError(f"{split_name}= images are {_shape(split.images.shape[1:])} but train= images are "
                              f"{_shape(shape)}: every split needs the same image shape")
        low = int(split.labels.min())
        if low < 0:
            raise ConfigError(f"{split_name}= has label {low}: labels must be 0 .. K-1")
    k = max(int(s.labels.max()) for s in splits.values()) + 1
    classes = _class_names(train)
    if classes is None:
        classes = [str(i) for i in range(k)]
    elif len(classes) < k:
        raise ConfigError(f"train= names {len(classes)} classes but a split has label {k - 1}")
    return Dataset(name=name, train=splits["train"], test=splits["test"], val=splits.get("val"), classes=classes)


def fingerprint(ds: Dataset) -> str:
    """A hash of every split's images and labels and of the class names: equal exactly when the data is."""
    h = hashlib.sha256()
    h.update(repr(list(ds.classes)).encode())
    for split_name in SPLITS:
        split = getattr(ds, split_name)
        if split is None:
            continue
        h.update(f"{split_name}:{tuple(split.images.shape)}".encode())
        h.update(split.images.contiguous().numpy().tobytes())
        h.update(split.labels.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# -- reading one split ------------------------------------------------------------------------------------------------
def _split(where: str, data: Any) -> Split:
    arrays = (torch.Tensor, np.ndarray)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, arrays) for d in data) and \
            np.ndim(data[1]) >= 1:  # (images, labels); a list of two (image, label) pairs is a dataset
        images, labels = data
    elif isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
        images, labels = data.tensors
    elif _is_map_dataset(data):
        images, labels = _read_items(where, data)
    else:
        raise ConfigError(f"{where}= must be a torch Dataset of (image, label) pairs or an (images, labels) pair of "
                          f"tensors, not {type(data).__name__}")
    images = _as_tensor(where, images, "images")
    labels = _as_tensor(where, labels, "labels")
    if images.dim() == 3:
        images = images.unsqueeze(1)  # (N, H, W): one channel
    if images.dim() != 4:
        raise ConfigError(f"{where}= images must be (N, C, H, W) or (N, H, W), got shape {tuple(images.shape)}")
    labels = _labels(where, labels)
    if labels.shape[0] != images.shape[0]:
        raise ConfigError(f"{where}= has {images.shape[0]} images but {labels.shape[0]} labels")
    return Split(_pixels(where, images), labels)


def _is_map_dataset(data: Any) -> bool:
    """A torch Dataset, or anything indexable with a length (a list of (image, label) pairs, say)."""
    return isinstance(data, torch.utils.data.Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")
                                                          and not isinstance(data, (str, bytes, dict)))


def _read_items(where: str, ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``(image, label)`` item of a map-style dataset, read once into one preallocated tensor."""
    n = len(ds)
    if n == 0:
        raise ConfigError(f"{where}= has no images")
    images: torch.Tensor | None = None
    labels = torch.empty(n, dtype=torch.int64)
    for i in range(n):
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ConfigError(f"{where}[{i}] must be an (image, label) pair, got {type(item).__name__}")
        x = _image(where, i, item[0])
        if images is None:
            # the first item decides shape and dtype; a float dataset is checked for 8-bit values below
            images = torch.empty((n, *x.shape), dtype=x.dtype)
        elif x.shape != images.shape[1:]:
            raise ConfigError(f"{where}[{i}] is {_shape(x.shape)} but {where}[0] is {_shape(images.shape[1:])}: "
                              f"every image needs the same shape")
        images[i] = x
        labels[i] = _label(where, i, item[1])
    assert images is not None
    return images, labels


def _image(where: str, i: int, x: Any) -> torch.Tensor:
    if not isinstance(x, (torch.Tensor, np.ndarray)) and hasattr(x, "mode") and hasattr(x, "size"):
        arr = np.asarray(x)  # a PIL image: (H, W) or (H, W, C)
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1) if arr.ndim == 3 else torch.from_numpy(arr.copy())
    x = _as_tensor(f"{where}[{i}]", x, "image")
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3:
        raise ConfigError(f"{where}[{i}] image must be (C, H, W) or (H, W), got shape {tuple(x.shape)}")
    return x


def _label(where: str, i: int, y: Any) -> int:
    if isinstance(y, torch.Tensor) and y.numel() == 1:
        y = y.item()
    elif isinstance(y, (np.ndarray, np.generic)) and y.size == 1:
        y = y.item()
    if isinstance(y, bool) or not (isinstance(y, int) or (isinstance(y, float) and y.is_integer())):
        raise ConfigError(f"{where}[{i}] label must be an integer class index, got {y!r}")
    return int(y)


def _as_tensor(where: str, x: Any, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    raise ConfigError(f"{where}= {what} must be a tensor or a numpy array, not {type(x).__name__}")


def _labels(where: str, labels: torch.Tensor) -> torch.Tensor:
    labels = labels.reshape(-1) if labels.dim() == 2 and labels.shape[1] == 1 else labels
    if labels.dim() != 1:
        raise ConfigError(f"{where}= labels must be (N,) class indices, got shape {tuple(labels.shape)}")
    if labels.is_floating_point():
        if not bool(torch.all(labels == labels.round())):
            raise ConfigError(f"{where}= labels must be integer class indices, got fractional values")
    elif labels.dtype == torch.bool or labels.is_complex():
        raise ConfigError(f"{where}= labels must be integer class indices, got {labels.dtype}")
    return labels.to(torch.int64).contiguous()


def _pixels(where: str, images: torch.Tensor) -> torch.Tensor:
    """uint8 images, read exactly from uint8, integers in 0..255 or floats k/255 in [0, 1]; else one line."""
    if images.dtype == torch.uint8:
        return images.contiguous()
    if images.dtype == torch.bool or images.is_complex():
        raise ConfigError(f"{where}= images are {images.dtype}; pass uint8 images or floats in [0, 1]")
    if images.is_floating_point():
        x = images.to(torch.float64)
        lo, hi = float(x.min()), float(x.max())
        levels = x * 255.0
        rounded = levels.round()
        if lo < 0.0 or hi > 1.0 or float((levels - rounded).abs().max()) > 1e-3:
            raise ConfigError(f"{where}= images are floats in [{lo:.3g}, {hi:.3g}] that are not 8-bit levels "
                              f"(k/255 in [0, 1]); pass uint8 images or ToTensor() output without Normalize: "
                              f"resprout normalizes with the training set's statistics itself")
        return rounded.to(torch.uint8).contiguous()
    lo, hi = int(images.min()), int(images.max())
    if lo < 0 or hi > 255:
        raise ConfigError(f"{where}= images hold integers in {lo}..{hi}; pass 8-bit values (0..255)")
    return images.to(torch.uint8).contiguous()


def _class_names(train: Any) -> list[str] | None:
    classes = getattr(train, "classes", None)
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, (str, int)) for c in classes):
        return [str(c) for c in classes]
    return None


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


# -- the run's configuration --------------------------------------------------------------------------------------------
def user_config_keys(values: dict, ds: Dataset) -> dict:
    """The config keys of a run on ``ds``: ``data`` becomes ``user`` (or stays ``user:<label>``) and
    ``data_options`` holds the data's fingerprint, so the run's identity includes its data."""
    data = values.get("data", "digits")
    if not is_user_source(str(data)):
        if data != "digits":  # the default: anything else names a built-in source, which train= would override
            raise ConfigError(f"data={data!r} and train= both give the data; drop data= (or label it "
                              f"data=user:<label>)")
        data = USER_SOURCE
    if values.get("data_path") is not None:
        raise ConfigError("data_path is not used with data from Python code (train=, test=)")
    extra = set(values.get("data_options") or {}) - {"fingerprint"}
    if extra:
        raise ConfigError(f"data options ({', '.join(sorted(extra))}) are not used with data from Python code")
    return {**values, "data": data, "data_options": {"fingerprint": fingerprint(ds)}}


def check_same_data(saved_options: dict, ds: Dataset | None, where: str) -> None:
    """Refuse (one line) to reopen a run on data other than the data it trained on."""
    if ds is None:
        raise ConfigError(f"{where} trained on data from Python code; pass the same data again: "
                          f"resprout.resume(dir, train=..., test=...) (or resprout.run.open_run(dir, train=..., "
                          f"test=...))")
    stored, given = saved_options.get("fingerprint"), fingerprint(ds)
    if stored != given:
        raise ConfigError(f"the data passed (fingerprint {given}) is not the data {where} trained on (fingerprint "
                          f"{stored}); pass the same train=, val= and test=")
