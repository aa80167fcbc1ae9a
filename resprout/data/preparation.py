""":func:`prepare`: the dataset a run trains on, derived from a source's raw dataset (a validation carve, a seeded
``per_class`` subset, a fixed test subset, a common image size and channel count)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from resprout.data.dataset import Dataset, Split
from resprout.data.files import FileDataset
from resprout.data.stratify import (FIXED_TEST_SEED, SALT_SUBSET, SALT_TEST, SALT_VAL, by_class, rank_keys,
                                    stratified_fraction)
from resprout.errors import ConfigError, DataError
from resprout.options import Spec, check_options

# The arguments of prepare() that the config passes through, checked by the shared option validator.
_ARGUMENTS = {
    "test_per_class": Spec(int, min=1, allow_none=True),
    "per_class": Spec(int, min=1, allow_none=True),
    "data_seed": Spec(int, min=0),
    "image_size": Spec(int, min=1, allow_none=True),
    "fit": Spec(str, choices=("auto", "pad", "resize")),
    "channels": Spec(int, choices=(1, 3), allow_none=True),
    "val_split": Spec(float, min=0.0, max=1.0, max_exclusive=True),
}


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
    args = check_options({"test_per_class": test_per_class, "per_class": per_class, "data_seed": data_seed,
                          "image_size": image_size, "fit": fit, "channels": channels, "val_split": val_split},
                         _ARGUMENTS)
    test_per_class, per_class, data_seed = args["test_per_class"], args["per_class"], args["data_seed"]
    image_size, fit, channels, val_split = args["image_size"], args["fit"], args["channels"], args["val_split"]
    if not isinstance(ds, Dataset):
        raise TypeError(f"prepare() needs a Dataset, got {type(ds).__name__}")

    chosen = choose(ds, per_class=per_class, val_split=val_split, data_seed=data_seed, test_per_class=test_per_class)
    train_idx, val_from_train, test_idx = chosen.train, chosen.val_from_train, chosen.test
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
    test = derive(ds.test, test_idx)
    return Dataset(name=ds.name, train=train, test=test, val=val, classes=list(ds.classes))


@dataclass
class Choice:
    """Which images a run keeps, as indices into the source's splits (None: all of them, in order)."""

    train: np.ndarray | None
    val_from_train: np.ndarray | None  # the validation split carved from train (sources without one)
    test: np.ndarray | None


def choose(ds: Dataset | FileDataset, *, per_class: int | None = None, val_split: float = 0.0, data_seed: int = 0,
           test_per_class: int | None = None) -> Choice:
    """The seeded choices of :func:`prepare` (validation carve, ``per_class`` subset, fixed test subset), from the
    labels alone: the same for a dataset in memory and for its files."""
    k = ds.num_classes
    labels = ds.train.labels.numpy()
    train_idx: np.ndarray | None = None  # None: the whole of train
    val_from_train: np.ndarray | None = None
    if ds.val is None and val_split > 0.0:
        train_idx, val_from_train, too_few = stratified_fraction(labels, k, float(val_split), data_seed, SALT_VAL)
        if too_few:
            c, n = too_few[0]
            raise DataError(f"val_split={val_split}: class {ds.classes[c]!r} has only {n} training image, "
                            f"cannot carve a validation image from it and keep one for training")
    if per_class is not None:
        pool = np.arange(len(labels)) if train_idx is None else train_idx
        groups = by_class(labels[pool], rank_keys(len(pool), data_seed, SALT_SUBSET), k)
        for c, idx in enumerate(groups):
            if len(idx) < per_class:
                after = " after carving the validation split" if val_from_train is not None else ""
                raise DataError(f"per_class={per_class}: class {ds.classes[c]!r} has only {len(idx)} training "
                                f"images{after}")
        train_idx = np.sort(pool[np.concatenate([idx[:per_class] for idx in groups])])
    test_idx = None
    if test_per_class is not None:
        test_labels = ds.test.labels.numpy()
        groups = by_class(test_labels, rank_keys(len(test_labels), FIXED_TEST_SEED, SALT_TEST), k)
        for c, idx in enumerate(groups):
            if len(idx) < test_per_class:
                raise DataError(f"test_per_class={test_per_class}: class {ds.classes[c]!r} has only {len(idx)} "
                                f"test images")
        test_idx = np.sort(np.concatenate([idx[:test_per_class] for idx in groups]))
    return Choice(train_idx, val_from_train, test_idx)


def prepare_files(ds: FileDataset, *, per_class: int | None = None, val_split: float = 0.0, data_seed: int = 0,
                  test_per_class: int | None = None) -> FileDataset:
    """The files a run trains on: :func:`prepare`'s choices (:func:`choose`) applied to a dataset of files."""
    c = choose(ds, per_class=per_class, val_split=val_split, data_seed=data_seed, test_per_class=test_per_class)
    val = ds.val if ds.val is not None else (ds.train.subset(c.val_from_train) if c.val_from_train is not None
                                             else None)
    return FileDataset(ds.name, train=ds.train.subset(c.train), test=ds.test.subset(c.test), val=val,
                       classes=list(ds.classes), channels=ds.channels, image_size=ds.image_size)


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

