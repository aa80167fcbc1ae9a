"""Data sources: the registry that turns a source name into a raw :class:`~resprout.data.Dataset`.

A *source* turns a name (and, for files on disk, a path) into a raw dataset with its full train and test splits
(and a validation split if the source has one); :func:`resprout.data.prepare` then derives the dataset a run trains
on. Built-in sources (see :func:`available_sources`), one module each in this package: ``digits`` (scikit-learn's
8x8 digits, offline), ``fashion-mnist`` and ``mnist`` (IDX files, :mod:`.idx`), ``cifar10`` and ``cifar100`` (the
python-pickle layouts, :mod:`.cifar`), ``imagefolder`` (class-per-folder trees read with Pillow), the five fine-grained
sets of the Knowledge Evolution paper in their official layouts (``cub200``, ``flower102``, ``fgvc-aircraft``,
``mit67``, ``stanford-dogs``; :mod:`.cub`, :mod:`.flowers`, :mod:`.aircraft`, :mod:`.mit67`, :mod:`.dogs`), the
re-identification sets ``fashion-reid``, ``market1501`` and ``dukemtmc`` (:mod:`.reid`), the detection sets ``voc``,
``coco`` and ``fashion-canvas`` (:mod:`.detection`) and ``synthetic`` (for tests). More can be added with
:func:`register_source` (:mod:`.registry`). A source of image files may return a
:class:`~resprout.data.files.FileDataset` (files and labels): :func:`load_source` decodes it, :func:`open_source`
keeps it as files. A re-identification source returns a :class:`~resprout.data.reid.ReidDataset` (train, query and
gallery splits with identities and cameras), which :func:`resprout.data.reid.prepared.prepare_reid` makes a run's;
a detection source a :class:`~resprout.data.detection.loaders.DetectionData` (train and test detection splits).

A source's options are the keyword parameters of its function; those it declares with a
:class:`~resprout.options.Spec` are checked by the shared option validator before the function runs.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from resprout.data.dataset import Dataset, Split, channel_stats
from resprout.data.detection.loaders import DetectionData
from resprout.data.files import FileDataset, decode
from resprout.data.preparation import prepare
from resprout.data.reid.dataset import ReidDataset
from resprout.data.sources.registry import KEYWORD, SOURCES, available_sources, register_source
from resprout.errors import ConfigError
from resprout.options import unknown_name, validate

__all__ = [
    "Dataset",
    "SOURCES",
    "Split",
    "available_sources",
    "channel_stats",
    "load_source",
    "open_source",
    "prepare",
    "register_source",
]


def load_source(name: str, path: str | os.PathLike | None = None,
                **options: Any) -> Dataset | ReidDataset | DetectionData:
    """The raw, full dataset of source ``name`` (see :func:`available_sources`), in memory.

    ``path`` is the data directory for sources read from disk; ``options`` are the source's own options (e.g.
    ``labels="coarse"`` for cifar100). An unknown source, an option the source does not take or a bad value of a
    declared option is a ConfigError. A source of image files is decoded here (:func:`resprout.data.files.decode`);
    :func:`open_source` returns its listing instead.
    """
    ds = open_source(name, path, **options)
    return decode(ds) if isinstance(ds, FileDataset) else ds


def open_source(name: str, path: str | os.PathLike | None = None,
                **options: Any) -> Dataset | FileDataset | ReidDataset | DetectionData:
    """Like :func:`load_source`, but a source of image files returns its :class:`FileDataset` (files and labels,
    nothing decoded yet)."""
    source = SOURCES.get(name)
    key = SOURCES.canonical(name)
    where = f"data source {key!r}"
    params = inspect.signature(source.fn).parameters
    takes_path = "path" in params
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [n for n, p in params.items() if n != "path" and p.kind in KEYWORD]
    if not takes_any:
        for opt in options:
            if opt not in allowed:
                raise unknown_name(repr(opt), allowed, where=where)
    if path is not None and not takes_path:
        raise ConfigError(f"data source {key!r} does not read files, so it takes no data_path (got {str(path)!r})")
    kwargs = {opt: validate(opt, value, source.options[opt], strict=True, where=where)
              if opt in source.options else value for opt, value in options.items()}
    if takes_path:
        kwargs["path"] = path
    ds = source.fn(**kwargs)
    if not isinstance(ds, (Dataset, FileDataset, ReidDataset, DetectionData)):
        raise TypeError(f"data source {key!r} returned {type(ds).__name__}, expected a Dataset, a FileDataset, a "
                        f"ReidDataset or a DetectionData")
    return ds


# The built-in sources register themselves when imported; the IDX constants stay importable from here.
from resprout.data.sources import (aircraft, cifar, cub, detection, digits, dogs, flowers, idx,  # noqa: E402,F401  isort:skip
                                   imagefolder, mit67, reid, synthetic)
from resprout.data.sources.idx import FASHION_MNIST_CLASSES, IDX_FILES, SYSTEM_DATA_DIRS  # noqa: E402,F401  isort:skip
