"""Pascal VOC folders: read one image set into a :class:`DetectionDataset`, or write one.

The layout (Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010; the devkit's)::

    root/Annotations/<id>.xml            one <annotation> per image: <filename>, <size>, <object>s
    root/JPEGImages/<filename>           the image (<id>.jpg when the XML names none)
    root/ImageSets/Main/<split>.txt      the ids of an image set (train, val, trainval, test), one per line
    root/ImageSets/Main/<class>_<split>.txt   per class: "<id>  1" (present), "-1" (absent), " 0" (only difficult)

VOC boxes are 1-based inclusive pixel indices (``xmin = 1`` is the first column); in memory they are continuous
coordinates (:mod:`.dataset`): ``x1 = xmin - 1, x2 = xmax``. An object marked ``<difficult>1`` becomes a crowd
object: evaluation ignores it, as the VOC devkit does.

Every problem with the folder is one :class:`~resprout.errors.DataError` line naming the file: a missing file, an
empty or malformed XML file, a missing or non-numeric field, a class name that is not one of the classes, a box that
is empty or lies outside its image, an image whose size differs from its <size>.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from resprout.data import readers
from resprout.data.detection.dataset import DetectionDataset, chw_tensor, hwc_array, read_annotation_file
from resprout.errors import DataError

__all__ = ["VOC_CLASSES", "read_voc", "voc_classes", "write_voc"]

#: The 20 classes of PASCAL VOC 2007-2012, in the devkit's (alphabetical) order.
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def _main_dir(root: Path) -> Path:
    return root / "ImageSets" / "Main"


def voc_classes(root: str | os.PathLike, split: str) -> list[str]:
    """The classes a VOC folder declares for ``split``: one per ``ImageSets/Main/<class>_<split>.txt`` file,
    sorted (the devkit's order for the 20 VOC classes). DataError when there is none."""
    main = _main_dir(Path(root))
    suffix = f"_{split}.txt"
    names = sorted(p.name[:-len(suffix)] for p in main.glob(f"*{suffix}") if len(p.name) > len(suffix))
    if not names:
        raise DataError(f"{main} has no <class>_{split}.txt files to name the classes; pass classes=[...]")
    return names


def _read_ids(list_file: Path) -> list[str]:
    if not list_file.is_file():
        present = sorted(p.stem for p in list_file.parent.glob("*.txt") if "_" not in p.stem)
        raise DataError(f"{list_file} does not exist (image sets there: {', '.join(present) or 'none'})")
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{list_file} cannot be read: {readers.one_line(e)}") from None
    ids: list[str] = []
    seen: set[str] = set()
    for lineno, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry:
            continue
        if len(entry.split()) != 1 or "/" in entry or "\\" in entry or entry in (".", ".."):
            raise DataError(f"{list_file} line {lineno}: {entry!r} is not an image id (one id per line)")
        if entry in seen:
            raise DataError(f"{list_file} line {lineno}: image id {entry!r} is listed twice")
        seen.add(entry)
        ids.append(entry)
    if not ids:
        raise DataError(f"{list_file} lists no images")
    return ids


def _text(parent: ET.Element, tag: str, where: str) -> str:
    el = parent.find(tag)
    if el is None or el.text is None or not el.text.strip():
        raise DataError(f"{where} has no <{tag}>")
    return el.text.strip()


def _number(parent: ET.Element, tag: str, where: str) -> float:
    text = _text(parent, tag, where)
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: <{tag}> is {text!r}, not a number") from None
    if not np.isfinite(value):
        raise DataError(f"{where}: <{tag}> is {text!r}, not a finite number")
    return value


def _parse_annotation(xml_file: Path, classes: Sequence[str]) -> tuple[str | None, int, int, list, list, list]:
    """(file name or None, width, height, boxes, labels, difficult) of one annotation file."""
    data = read_annotation_file(xml_file, "an annotation needs <annotation> with <size> and its <object>s")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise DataError(f"{xml_file} is not well-formed XML: {readers.one_line(e)}") from None
    if root.tag != "annotation":
        raise DataError(f"{xml_file}: the root element is <{root.tag}>, expected <annotation>")
    filename = root.findtext("filename")
    filename = filename.strip() if filename and filename.strip() else None
    if filename is not None and (Path(filename).name != filename or filename in (".", "..")):
        raise DataError(f"{xml_file}: <filename> {filename!r} must be a plain file name in JPEGImages/")
    size = root.find("size")
    if size is None:
        raise DataError(f"{xml_file} has no <size>")
    width, height = (_number(size, tag, f"{xml_file} <size>") for tag in ("width", "height"))
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        raise DataError(f"{xml_file}: <size> is {width:g}x{height:g}, not a positive whole number of pixels")
    index = {c: i for i, c in enumerate(classes)}
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.findall("object"), 1):
        where = f"{xml_file} <object> {k}"
        name = _text(obj, "name", where)
        if name not in index:
            raise DataError(f"{where}: class {name!r} is not one of the {len(classes)} classes "
                            f"({', '.join(classes)})")
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{where} ({name}) has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(box, t, f"{where} ({name}) <bndbox>")
                                  for t in ("xmin", "ymin", "xmax", "ymax"))
        x1, y1, x2, y2 = xmin - 1, ymin - 1, xmax, ymax  # 1-based inclusive -> continuous
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise DataError(f"{where} ({name}): box xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g} is "
                            f"empty or outside the {int(width)}x{int(height)} image (1 <= xmin <= xmax <= width)")
        flag = obj.findtext("difficult")
        if flag is not None and flag.strip() not in ("0", "1"):
            raise DataError(f"{where} ({name}): <difficult> is {flag.strip()!r}, expected 0 or 1")
        boxes.append((x1, y1, x2, y2))
        labels.append(index[name])
        difficult.append(flag is not None and flag.strip() == "1")
    return filename, int(width), int(height), boxes, labels, difficult


def read_voc(root: str | os.PathLike, split: str = "trainval", *, classes: Sequence[str] | None = None,
             mode: str = "RGB") -> DetectionDataset:
    """The image set ``split`` of the VOC folder ``root``.

    ``classes`` fixes the class names and their order; by default they are read from the
    ``ImageSets/Main/<class>_<split>.txt`` files (:func:`voc_classes`). ``mode`` is Pillow's ``"RGB"`` (3 channels,
    what torchvision's detectors take) or ``"L"``. Images with no <object> are kept (background images).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (a VOC folder has Annotations/, JPEGImages/, ImageSets/Main/)")
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        if not (root / sub).is_dir():
            raise DataError(f"{root / sub} is missing (a VOC folder has Annotations/, JPEGImages/, ImageSets/Main/)")
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    ids = _read_ids(_main_dir(root) / f"{split}.txt")
    names = list(classes) if classes is not None else voc_classes(root, split)
    images, boxes, labels, crowd = [], [], [], []
    for image_id in ids:
        xml_file = root / "Annotations" / f"{image_id}.xml"
        if not xml_file.exists():
            raise DataError(f"{xml_file} does not exist (image {image_id!r} of {_main_dir(root) / (split + '.txt')})")
        filename, width, height, b, lab, diff = _parse_annotation(xml_file, names)
        image_file = root / "JPEGImages" / (filename or f"{image_id}.jpg")
        if not image_file.exists():
            raise DataError(f"{image_file} does not exist (the image of {xml_file})")
        array = readers.read_image(image_file, mode)
        if array.shape[:2] != (height, width):
            raise DataError(f"{image_file} is {array.shape[1]}x{array.shape[0]} but {xml_file} says "
                            f"{width}x{height}")
        images.append(chw_tensor(array))
        boxes.append(torch.tensor(b, dtype=torch.float32).reshape(-1, 4))
        labels.append(torch.tensor(lab, dtype=torch.int64))
        crowd.append(torch.tensor(diff, dtype=torch.bool))
    return DetectionDataset(f"voc:{root.name}/{split}", names, images, boxes, labels, ids, crowd)


def _coordinate(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _annotation_xml(ds: DetectionDataset, i: int, filename: str, folder: str) -> bytes:
    c, h, w = ds.images[i].shape
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", w), ("height", h), ("depth", c)):
        ET.SubElement(size, tag).text = str(int(value))
    ET.SubElement(root, "segmented").text = "0"
    for box, label, hard in zip(ds.boxes[i].tolist(), ds.labels[i].tolist(), ds.crowd[i].tolist(), strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = ds.classes[label]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "1" if hard else "0"
        bnd = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = box
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bnd, tag).text = _coordinate(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def write_voc(ds: DetectionDataset, root: str | os.PathLike, split: str, *, image_format: str = "png") -> Path:
    """Write ``ds`` as image set ``split`` of the VOC folder ``root`` (created if needed; other image sets already
    there are kept). Image files are ``JPEGImages/<id>.<image_format>`` (``png``: lossless; ``jpg``: quality 95),
    named in each XML's <filename>. Writes ``ImageSets/Main/<split>.txt`` and one ``<class>_<split>.txt`` per
    class. Image ids must differ between the image sets written to one folder (a second set with an id of the
    first would overwrite its files): the caller names them apart, as the canvas set does (``train_...``)."""
    from PIL import Image

    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(ds.ids):
        filename = f"{image_id}.{image_format}"
        Image.fromarray(hwc_array(ds.images[i])).save(root / "JPEGImages" / filename,
                                                      **({"quality": 95} if image_format == "jpg" else {}))
        (root / "Annotations" / f"{image_id}.xml").write_bytes(_annotation_xml(ds, i, filename, root.name))
    main = _main_dir(root)
    (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ds.ids), encoding="utf-8")
    for k, name in enumerate(ds.classes):
        rows = []
        for image_id, labels, hard in zip(ds.ids, ds.labels, ds.crowd, strict=True):
            mine = labels == k
            flag = 1 if bool((mine & ~hard).any()) else (0 if bool(mine.any()) else -1)
            rows.append(f"{image_id} {flag:2d}\n")
        (main / f"{name}_{split}.txt").write_text("".join(rows), encoding="utf-8")
    return root
