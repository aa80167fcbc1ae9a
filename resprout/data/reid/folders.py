"""Market-1501 and DukeMTMC-reID folders: their file-name conventions read into a :class:`ReidDataset`, and a
writer in Market-1501's convention.

Both sets ship three folders of cropped person images: ``bounding_box_train`` (train), ``query`` and
``bounding_box_test`` (the gallery); other files and folders (``gt_bbox``, ``Thumbs.db``, ...) are not read.

* **Market-1501** (Zheng et al., ICCV 2015): ``0002_c1s1_000451_03.jpg`` is identity 0002, camera 1, video sequence
  1, frame 000451, detection box 03. In the gallery, identity ``0000`` marks distractors (false detections: kept,
  they match no query) and ``-1`` junk images (parts of bodies: left out of the ranking entirely, as the
  benchmark's evaluation code does; their number is kept in :attr:`ReidDataset.junk`).
* **DukeMTMC-reID** (Zheng et al., ICCV 2017, from Ristani et al., ECCV 2016): ``0005_c2_f0046985.jpg`` is identity
  0005, camera 2, frame 0046985. No junk; its gallery holds distractor identities that no query has.

A query or train image of identity ``0000`` or ``-1``, or an image whose name does not follow the convention, has no
identity: one DataError line naming the file. So is a query identity with no gallery image from another camera.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from resprout.data import readers
from resprout.data.detection.dataset import hwc_array
from resprout.data.reid.dataset import ReidDataset, ReidSplit
from resprout.errors import DataError

__all__ = ["CONVENTIONS", "parse_name", "read_dukemtmc", "read_market1501", "read_reid_folder", "write_market1501"]

FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_EXT = r"\.(?:jpg|jpeg|png)"
CONVENTIONS = {
    "market1501": (re.compile(rf"^(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+){_EXT}$", re.IGNORECASE),
                   "<identity>_c<camera>s<sequence>_<frame>_<box>.jpg, e.g. 0002_c1s1_000451_03.jpg"),
    "dukemtmc": (re.compile(rf"^(\d+)_c(\d+)_f(\d+){_EXT}$", re.IGNORECASE),
                 "<identity>_c<camera>_f<frame>.jpg, e.g. 0005_c2_f0046985.jpg"),
}
JUNK, DISTRACTOR = -1, 0  # Market-1501's identities without a person to find


def parse_name(name: str, convention: str) -> tuple[int, int]:
    """(identity, camera) of an image file name, or DataError naming the expected form."""
    pattern, form = CONVENTIONS[convention]
    m = pattern.match(name)
    if m is None:
        raise DataError(f"{name} has no identity: its name does not follow {convention}'s {form}")
    return int(m.group(1)), int(m.group(2))


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder} is missing (a re-id folder has {', '.join(FOLDERS.values())})")
    try:
        names = sorted(e.name for e in os.scandir(folder))
    except OSError as e:
        raise DataError(f"{folder} cannot be read: {readers.one_line(e.strerror or e)}") from None
    files = [folder / n for n in names if readers.is_image_file(n)]
    if not files:
        raise DataError(f"{folder} has no images")
    return files


def _read_split(folder: Path, split: str, convention: str, size: tuple[int, int] | None,
                mode: str) -> tuple[ReidSplit, int]:
    from PIL import Image

    arrays, ids, cams, names = [], [], [], []
    junk = 0
    for path in _image_files(folder):
        try:
            identity, camera = parse_name(path.name, convention)
        except DataError as e:
            raise DataError(f"{folder}/{e}") from None
        if identity in (JUNK, DISTRACTOR) and convention == "market1501":
            if split != "gallery":
                raise DataError(f"{path} has no identity ({identity:04d} marks "
                                f"{'junk' if identity == JUNK else 'a distractor'}, allowed only in the gallery)")
            if identity == JUNK:
                junk += 1
                continue
        array = readers.read_image(path, mode)
        if size is not None and array.shape[:2] != size:
            array = np.asarray(Image.fromarray(array).resize((size[1], size[0]), Image.Resampling.BILINEAR))
        arrays.append(array)
        ids.append(identity)
        cams.append(camera)
        names.append(path.name)
    if not arrays:
        raise DataError(f"{folder} has only junk images")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first, other = arrays[0].shape, next(a.shape for a in arrays if a.shape != arrays[0].shape)
        raise DataError(f"{folder} has images of different sizes ({first[1]}x{first[0]} and {other[1]}x{other[0]}): "
                        f"pass size=(height, width)")
    stacked = torch.from_numpy(np.stack(arrays))
    images = stacked[:, None] if stacked.dim() == 3 else stacked.permute(0, 3, 1, 2)
    return ReidSplit(images.contiguous(), torch.tensor(ids, dtype=torch.int64), torch.tensor(cams, dtype=torch.int64),
                     names), junk


def read_reid_folder(root: str | os.PathLike, convention: str, *, size: tuple[int, int] | None = None,
                     mode: str = "RGB") -> ReidDataset:
    """A Market-1501-style folder (``bounding_box_train``, ``query``, ``bounding_box_test``) whose file names follow
    ``convention`` (``market1501`` or ``dukemtmc``). ``size=(height, width)`` resizes images of another size (Duke's
    crops differ in size; Market's are all 128x64); ``mode`` is Pillow's ``"RGB"`` or ``"L"``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (a re-id folder has {', '.join(FOLDERS.values())})")
    splits, junk = {}, 0
    for split, folder in FOLDERS.items():
        splits[split], dropped = _read_split(root / folder, split, convention, size, mode)
        junk += dropped
    return ReidDataset(f"{convention}:{root.name}", splits["train"], splits["query"], splits["gallery"], junk=junk)


def read_market1501(root: str | os.PathLike, **kw) -> ReidDataset:
    """:func:`read_reid_folder` with Market-1501's names."""
    return read_reid_folder(root, "market1501", **kw)


def read_dukemtmc(root: str | os.PathLike, **kw) -> ReidDataset:
    """:func:`read_reid_folder` with DukeMTMC-reID's names."""
    return read_reid_folder(root, "dukemtmc", **kw)


def write_market1501(ds: ReidDataset, root: str | os.PathLike) -> Path:
    """Write ``ds`` in Market-1501's layout and names (lossless PNG): ``<id:04d>_c<camera>s1_<frame:06d>_01.png``
    with a frame number unique over the whole folder, so :func:`read_market1501` reads the same splits back (in
    file-name order)."""
    from PIL import Image

    root = Path(root)
    frame = 0
    for split, folder in FOLDERS.items():
        part = ds.splits()[split]
        (root / folder).mkdir(parents=True, exist_ok=True)
        for image, identity, camera in zip(part.images, part.ids.tolist(), part.cameras.tolist(), strict=True):
            frame += 1
            name = f"{identity:04d}_c{camera}s1_{frame:06d}_01.png"
            Image.fromarray(hwc_array(image)).save(root / folder / name)
    return root
