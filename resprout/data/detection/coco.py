"""COCO-style JSON annotations (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; the format of
its ``instances_*.json`` files) read into a :class:`DetectionDataset`, and written from one.

The file holds ``images`` (``id``, ``file_name``, ``width``, ``height``), ``categories`` (``id``, ``name``) and
``annotations`` (``image_id``, ``category_id``, ``bbox = [x, y, w, h]`` in continuous pixels, ``iscrowd``). Labels
are the categories in order of their ids (COCO's ids have gaps), unless ``classes`` fixes the names and order.
Images without annotations are kept (background images); ``iscrowd = 1`` objects become crowd objects.

Every problem is one :class:`~resprout.errors.DataError` line naming the file and the entry: an empty file, malformed
JSON, a missing or mistyped field, a category the classes do not have, an annotation of an image the file does not
list, a box that is empty or lies outside its image, an image whose size differs from its entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resprout.data import readers
from resprout.data.detection.dataset import DetectionDataset, chw_tensor, hwc_array, read_annotation_file
from resprout.errors import DataError

__all__ = ["coco_dict", "read_coco", "write_coco"]


def _load_json(path: Path) -> Any:
    data = read_annotation_file(path, "a COCO file holds images, annotations and categories")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {readers.one_line(e)}") from None


def _field(entry: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(entry, dict):
        raise DataError(f"{where} is a {type(entry).__name__}, expected an object")
    if key not in entry:
        raise DataError(f"{where} has no {key!r}")
    value = entry[key]
    # bool is an int in Python; a JSON true/false is not a count, an id or a coordinate
    if isinstance(value, bool) or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataError(f"{where}: {key!r} is {json.dumps(value)}, expected {names}")
    return value


def read_coco(annotation_file: str | os.PathLike, image_dir: str | os.PathLike, *,
              classes: Sequence[str] | None = None, mode: str = "RGB") -> DetectionDataset:
    """The images of the COCO JSON file ``annotation_file``, read from ``image_dir/<file_name>``."""
    path = Path(annotation_file).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist (a COCO annotation file)")
    image_dir = Path(image_dir).expanduser()
    if not image_dir.is_dir():
        raise DataError(f"{image_dir} is not a folder (the images of {path})")
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, expected an object with images, annotations "
                        f"and categories")
    sections = {key: _field(data, key, list, str(path)) for key in ("images", "annotations", "categories")}
    if not sections["categories"]:
        raise DataError(f"{path} has no categories")
    if not sections["images"]:
        raise DataError(f"{path} lists no images")

    category_names: dict[int, str] = {}
    for k, cat in enumerate(sections["categories"]):
        where = f"{path} categories[{k}]"
        cid, name = _field(cat, "id", int, where), _field(cat, "name", str, where)
        if cid in category_names:
            raise DataError(f"{where}: category id {cid} is used twice")
        if name in category_names.values():
            raise DataError(f"{where}: category name {name!r} is used twice")
        category_names[cid] = name
    names = list(classes) if classes is not None else [category_names[c] for c in sorted(category_names)]
    index = {name: i for i, name in enumerate(names)}
    for cid, name in category_names.items():
        if name not in index:
            raise DataError(f"{path}: category {cid} {name!r} is not one of the {len(names)} classes "
                            f"({', '.join(names)})")

    entries: dict[Any, tuple[str, int, int]] = {}
    id_texts: set[str] = set()
    for k, img in enumerate(sections["images"]):
        where = f"{path} images[{k}]"
        iid = _field(img, "id", (int, str), where)
        file_name = _field(img, "file_name", str, where)
        width, height = _field(img, "width", int, where), _field(img, "height", int, where)
        if str(iid) in id_texts:  # 1 and "1" would be one image id in the dataset
            raise DataError(f"{where}: image id {iid!r} is used twice")
        id_texts.add(str(iid))
        if width < 1 or height < 1:
            raise DataError(f"{where}: size {width}x{height} is not positive")
        if not file_name or Path(file_name).is_absolute() or ".." in Path(file_name).parts:
            raise DataError(f"{where}: file_name {file_name!r} must be a relative path inside {image_dir}")
        entries[iid] = (file_name, width, height)

    objects: dict[Any, list[tuple[tuple[float, ...], int, bool]]] = {iid: [] for iid in entries}
    for k, ann in enumerate(sections["annotations"]):
        where = f"{path} annotations[{k}]"
        iid = _field(ann, "image_id", (int, str), where)
        cid = _field(ann, "category_id", int, where)
        bbox = _field(ann, "bbox", list, where)
        crowd = ann.get("iscrowd", 0) if isinstance(ann, dict) else 0
        if iid not in entries:
            raise DataError(f"{where}: image_id {iid!r} is not in the file's images")
        if cid not in category_names:
            raise DataError(f"{where}: category_id {cid} is not one of the file's categories "
                            f"({', '.join(str(c) for c in sorted(category_names))})")
        if len(bbox) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox) \
                or not np.isfinite(bbox).all():
            raise DataError(f"{where}: bbox is {json.dumps(bbox)}, expected four numbers [x, y, width, height]")
        if crowd not in (0, 1) or isinstance(crowd, bool):
            raise DataError(f"{where}: iscrowd is {json.dumps(crowd)}, expected 0 or 1")
        x, y, w, h = (float(v) for v in bbox)
        _, width, height = entries[iid]
        if not (x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= width and y + h <= height):
            raise DataError(f"{where}: bbox {json.dumps(bbox)} is empty or outside the {width}x{height} image "
                            f"{iid!r}")
        objects[iid].append(((x, y, x + w, y + h), index[category_names[cid]], bool(crowd)))

    images, boxes, labels, crowds, ids = [], [], [], [], []
    for iid, (file_name, width, height) in entries.items():
        image_file = image_dir / file_name
        if not image_file.exists():
            raise DataError(f"{image_file} does not exist (image {iid!r} of {path})")
        array = readers.read_image(image_file, mode)
        if array.shape[:2] != (height, width):
            raise DataError(f"{image_file} is {array.shape[1]}x{array.shape[0]} but {path} says {width}x{height}")
        images.append(chw_tensor(array))
        found = objects[iid]
        boxes.append(torch.tensor([b for b, _, _ in found], dtype=torch.float32).reshape(-1, 4))
        labels.append(torch.tensor([lab for _, lab, _ in found], dtype=torch.int64))
        crowds.append(torch.tensor([c for _, _, c in found], dtype=torch.bool))
        ids.append(str(iid))
    return DetectionDataset(f"coco:{path.stem}", names, images, boxes, labels, ids, crowds)


def coco_dict(ds: DetectionDataset, file_names: Sequence[str] | None = None) -> dict[str, Any]:
    """``ds`` as a COCO dict: image ids 1..N in order, category ids 1..C (label + 1), boxes as [x, y, w, h]."""
    names = list(file_names) if file_names is not None else [f"{i}.png" for i in ds.ids]
    images, annotations = [], []
    for i in range(len(ds)):
        _, h, w = ds.images[i].shape
        images.append({"id": i + 1, "file_name": names[i], "width": int(w), "height": int(h)})
        for box, label, crowd in zip(ds.boxes[i].tolist(), ds.labels[i].tolist(), ds.crowd[i].tolist(), strict=True):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": int(crowd)})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(ds.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(ds: DetectionDataset, annotation_file: str | os.PathLike, image_dir: str | os.PathLike) -> Path:
    """Write ``ds`` as a COCO JSON file and its images (``<id>.png``, lossless) into ``image_dir``."""
    from PIL import Image

    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image_id in enumerate(ds.ids):
        Image.fromarray(hwc_array(ds.images[i])).save(image_dir / f"{image_id}.png")
        names.append(f"{image_id}.png")
    path = Path(annotation_file)
    path.write_text(json.dumps(coco_dict(ds, names)), encoding="utf-8")
    return path
