"""The detection sources: ``voc`` (a Pascal VOC folder), ``coco`` (COCO JSON files and their images) and
``fashion-canvas`` (the Fashion-MNIST canvas set, :mod:`resprout.data.detection.canvas`, built in memory).

Each returns a :class:`~resprout.data.detection.loaders.DetectionData` (a train and a test
:class:`~resprout.data.detection.DetectionDataset`), not a classification :class:`~resprout.data.Dataset`: a run on
one trains a detector (``model=tv-det:<name>``) and is evaluated by mAP (:class:`resprout.engine.detection.
DetectionTask`). The readers' own checks (a box outside its image, an empty or malformed annotation file, an unknown
class name) are :class:`~resprout.errors.DataError` lines.
"""

from __future__ import annotations

import os
from pathlib import Path

from resprout.data.sources._paths import user_path
from resprout.data.sources.registry import register_source
from resprout.errors import ConfigError
from resprout.options import Spec

_MODE = Spec(str, choices=("RGB", "L"), help="RGB, or L (grayscale; repeated to 3 channels for the detector)")


def _pair(value, key: str, kind: type, example: str) -> tuple:
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, kind) and not isinstance(v, bool) for v in value) and value[0] <= value[1]):
        raise ConfigError(f"data.{key} must be low,high with low <= high (e.g. {example}); got {value!r}")
    return tuple(value)


@register_source("voc", options={"train_set": Spec(str, help="the image set trained on (ImageSets/Main/<name>.txt)"),
                                 "test_set": Spec(str, help="the image set evaluated on"), "mode": _MODE})
def _voc(path: str | os.PathLike | None = None, *, train_set: str = "trainval", test_set: str = "test",
         mode: str = "RGB"):
    """A Pascal VOC folder (Annotations/, JPEGImages/, ImageSets/Main/): data.train_set and data.test_set."""
    from resprout.data.detection.loaders import DetectionData
    from resprout.data.detection.voc import read_voc

    if path is None:
        raise ConfigError("data source 'voc' needs data_path=DIR (a VOC folder with Annotations/, JPEGImages/ and "
                          "ImageSets/Main/)")
    root = user_path("voc", path)
    train = read_voc(root, train_set, mode=mode)
    test = read_voc(root, test_set, classes=train.classes, mode=mode)
    return DetectionData(f"voc:{Path(root).name}", train, test)


@register_source("coco", options={"train_json": Spec(str, help="the train annotation file (relative to data_path)"),
                                  "test_json": Spec(str, help="the test annotation file (relative to data_path)"),
                                  "train_images": Spec(str, help="the train images' folder (relative to data_path)"),
                                  "test_images": Spec(str, help="the test images' folder (relative to data_path)"),
                                  "mode": _MODE})
def _coco(path: str | os.PathLike | None = None, *, train_json: str | None = None, test_json: str | None = None,
          train_images: str = ".", test_images: str = ".", mode: str = "RGB"):
    """COCO JSON annotation files and their images: data.train_json, data.test_json (and data.*_images)."""
    from resprout.data.detection.coco import read_coco
    from resprout.data.detection.loaders import DetectionData

    if path is None or train_json is None or test_json is None:
        raise ConfigError("data source 'coco' needs data_path=DIR with data.train_json=FILE and data.test_json=FILE "
                          "(relative to DIR; data.train_images / data.test_images name the image folders, default DIR)")
    root = Path(user_path("coco", path))
    train = read_coco(root / train_json, root / train_images, mode=mode)
    test = read_coco(root / test_json, root / test_images, classes=train.classes, mode=mode)
    return DetectionData(f"coco:{root.name}", train, test)


@register_source("fashion-canvas", options={
    "n_train": Spec(int, min=1, help="train canvases"), "n_test": Spec(int, min=1, help="test canvases"),
    "canvas_size": Spec(int, min=32, help="canvas side in pixels"),
    "objects": Spec(list, help="low,high: objects per canvas, uniform (e.g. 2,5)"),
    "scale": Spec(list, help="low,high: item scale, log-uniform (e.g. 0.75,2.5)"),
    "max_iou": Spec(float, min=0.0, max=1.0, help="largest IoU of two objects of a canvas"),
    "seed": Spec(int, min=0, help="seed of the canvases (train and test draw apart)")})
def _fashion_canvas(path: str | os.PathLike | None = None, *, n_train: int = 2000, n_test: int = 500,
                    canvas_size: int = 128, objects: list = (2, 5), scale: list = (0.75, 2.5), max_iou: float = 0.5,
                    seed: int = 0):
    """The detection analog: Fashion-MNIST items pasted on black canvases with their boxes (path: Fashion-MNIST)."""
    from resprout.data.detection.canvas import fashion_canvases
    from resprout.data.detection.loaders import DetectionData

    objects = _pair(objects, "objects", int, "2,5")
    scale = _pair([float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in scale]
                  if isinstance(scale, (list, tuple)) else scale, "scale", float, "0.75,2.5")
    try:
        made = fashion_canvases(path, n_train=n_train, n_test=n_test, canvas_size=canvas_size, objects=objects,
                                scale=scale, max_iou=max_iou, seed=seed)
    except ValueError as e:  # make_canvases's own checks (an item that does not fit the canvas, ...)
        raise ConfigError(f"data=fashion-canvas: {e}") from None
    return DetectionData("fashion-canvas", made["train"], made["test"])
