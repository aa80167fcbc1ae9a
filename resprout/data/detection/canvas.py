"""The Fashion-MNIST canvas set: a detection set made of real images, for machines that cannot download one.

No detection dataset (PASCAL VOC, COCO) can be fetched here, so KTAN's Table II (Faster R-CNN on VOC 2007) gets an
analog: Fashion-MNIST items (real photographs of clothing, 28x28 grayscale) pasted onto larger black canvases,
several per canvas, each at its own scale, some overlapping, with the box of each item. The train canvases use
Fashion-MNIST's train images, the test canvases its test images, so no item is in both. It is an analog, not VOC:
one object style per class, a plain background, no clutter and no truncation (docs/vision.md).

How a canvas is made (:func:`make_canvases`), all from one seeded ``numpy`` generator:

* its number of objects is uniform in ``objects`` (inclusive);
* each object is the next item of a seeded permutation of the source items, scaled by a factor drawn log-uniformly
  in ``scale`` (bilinear), and placed at a uniform position inside the canvas where its box overlaps each box
  already placed by an IoU of at most ``max_iou`` (50 tries; a canvas whose next object finds no place keeps the
  objects it has, at least one);
* items are composited with the pixel-wise maximum (bright items on black: a later item does not hide an earlier
  one, where they overlap both show);
* the box is the tightest one around the item's pixels brighter than ``threshold`` after scaling.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch

from resprout.data.detection.dataset import DetectionDataset
from resprout.data.detection.voc import write_voc

__all__ = ["box_iou", "class_slug", "fashion_canvases", "make_canvases", "write_fashion_canvas_voc"]

_PLACEMENT_TRIES = 50


def class_slug(name: str) -> str:
    """A class name usable in VOC file names (``T-shirt/top`` -> ``t_shirt_top``)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _scaled(item: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if item.shape == (size, size):
        return item
    return np.asarray(Image.fromarray(item).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def make_canvases(items: torch.Tensor, item_labels: torch.Tensor, classes: list[str], count: int, *,
                  canvas_size: int = 128, objects: tuple[int, int] = (2, 5), scale: tuple[float, float] = (0.75, 2.5),
                  max_iou: float = 0.5, threshold: int = 16, seed: int = 0, id_prefix: str = "",
                  name: str = "fashion-canvas") -> DetectionDataset:
    """``count`` canvases of ``canvas_size`` x ``canvas_size`` (1 channel) made of ``items`` (uint8 (N, 1, h, w))
    labelled ``item_labels`` (indices into ``classes``); see the module docstring for the rules."""
    if items.dtype != torch.uint8 or items.dim() != 4 or items.shape[1] != 1:
        raise ValueError(f"items must be uint8 (N, 1, H, W), got {items.dtype} {tuple(items.shape)}")
    lo, hi = objects
    if not 1 <= lo <= hi:
        raise ValueError(f"objects must be (low, high) with 1 <= low <= high, got {objects}")
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
    item_size = max(items.shape[2:])
    if math.ceil(item_size * scale[1]) > canvas_size:
        raise ValueError(f"an item scaled by {scale[1]} ({math.ceil(item_size * scale[1])} px) does not fit a "
                         f"{canvas_size}-pixel canvas")
    rng = np.random.default_rng(seed)
    source = items[:, 0].numpy()
    source_labels = item_labels.numpy()
    order = rng.permutation(len(source))
    taken = 0
    images, boxes, labels, ids = [], [], [], []
    for j in range(count):
        canvas = np.zeros((canvas_size, canvas_size), dtype=np.uint8)
        placed: list[tuple[float, float, float, float]] = []
        placed_labels: list[int] = []
        wanted = int(rng.integers(lo, hi + 1))
        while len(placed) < wanted:
            index = order[taken % len(order)]
            taken += 1
            factor = math.exp(rng.uniform(math.log(scale[0]), math.log(scale[1])))
            patch = _scaled(source[index], max(1, round(item_size * factor)))
            rows = np.flatnonzero((patch > threshold).any(axis=1))
            cols = np.flatnonzero((patch > threshold).any(axis=0))
            if len(rows) == 0:  # an item with no pixel above the threshold has no box: take the next one
                continue
            size = patch.shape[0]
            spot = None
            for _ in range(_PLACEMENT_TRIES):
                x, y = (int(v) for v in rng.integers(0, canvas_size - size + 1, size=2))
                box = (float(x + cols[0]), float(y + rows[0]), float(x + cols[-1] + 1), float(y + rows[-1] + 1))
                if all(box_iou(box, other) <= max_iou for other in placed):
                    spot = (x, y, box)
                    break
            if spot is None:
                if placed:
                    break
                continue  # an empty canvas always has room: only a pathological draw gets here
            x, y, box = spot
            np.maximum(canvas[y:y + size, x:x + size], patch, out=canvas[y:y + size, x:x + size])
            placed.append(box)
            placed_labels.append(int(source_labels[index]))
        images.append(torch.from_numpy(canvas)[None])
        boxes.append(torch.tensor(placed, dtype=torch.float32))
        labels.append(torch.tensor(placed_labels, dtype=torch.int64))
        ids.append(f"{id_prefix}{j:06d}")
    return DetectionDataset(name, list(classes), images, boxes, labels, ids)


def _readme(root: Path, counts: dict[str, tuple[int, int]], params: dict) -> str:
    lines = [
        "# Fashion-MNIST canvas set (a detection analog, generated)",
        "",
        "Written by `resprout.data.detection.canvas.write_fashion_canvas_voc`; rerun it with the same parameters to",
        "get the same files. Fashion-MNIST items (real photographs, 28x28 grayscale) pasted onto black canvases with",
        "their boxes: several per canvas, each at its own scale, some overlapping. Train canvases use Fashion-MNIST's",
        "train images, test canvases its test images. An analog of a detection set, not PASCAL VOC: one object style",
        "per class, a plain background, no clutter or truncation (docs/vision.md in resprout).",
        "",
        "Layout: Pascal VOC (`Annotations/`, `JPEGImages/` holding PNG files named in each XML, `ImageSets/Main/`).",
        "Read it with `resprout.data.detection.read_voc(root, 'train')` (or `'test'`).",
        "",
        "| image set | canvases | objects |",
        "|---|---|---|",
    ]
    lines += [f"| {split} | {n} | {k} |" for split, (n, k) in counts.items()]
    lines += ["", "Parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()), ""]
    return "\n".join(lines)


def fashion_canvases(fashion_path: str | os.PathLike | None = None, *, n_train: int = 2000, n_test: int = 500,
                     canvas_size: int = 128, objects: tuple[int, int] = (2, 5),
                     scale: tuple[float, float] = (0.75, 2.5), max_iou: float = 0.5,
                     seed: int = 0) -> dict[str, DetectionDataset]:
    """The canvas set's ``train`` and ``test`` splits, made from Fashion-MNIST (read with the ``fashion-mnist``
    source from ``fashion_path`` or where that source looks). The classes are Fashion-MNIST's, as VOC-safe names
    (:func:`class_slug`) in alphabetical order (the order :func:`~resprout.data.detection.voc.read_voc` reads them
    back in). The two splits draw from their own streams (seeds 2s and 2s + 1), so n_train does not change the test
    set."""
    from resprout.data.sources.idx import fashion_mnist  # the module, not the package: its sources import this one

    fashion = fashion_mnist(fashion_path)
    slugs = [class_slug(c) for c in fashion.classes]
    classes = sorted(slugs)
    remap = torch.tensor([classes.index(s) for s in slugs], dtype=torch.int64)
    params = dict(canvas_size=canvas_size, objects=tuple(objects), scale=tuple(scale), max_iou=max_iou)
    return {split: make_canvases(part.images, remap[part.labels], classes, n, id_prefix=f"{split}_",
                                 seed=seed * 2 + offset, name=f"fashion-canvas/{split}", **params)
            for split, n, part, offset in (("train", n_train, fashion.train, 0), ("test", n_test, fashion.test, 1))}


def write_fashion_canvas_voc(root: str | os.PathLike, *, fashion_path: str | os.PathLike | None = None,
                             n_train: int = 2000, n_test: int = 500, canvas_size: int = 128,
                             objects: tuple[int, int] = (2, 5), scale: tuple[float, float] = (0.75, 2.5),
                             max_iou: float = 0.5, seed: int = 0) -> dict[str, DetectionDataset]:
    """Make the canvas set (:func:`fashion_canvases`) and write it as the VOC folder ``root``, image sets ``train``
    and ``test``, with a README.md. Returns the two datasets."""
    params = dict(canvas_size=canvas_size, objects=objects, scale=scale, max_iou=max_iou)
    out = fashion_canvases(fashion_path, n_train=n_train, n_test=n_test, seed=seed, **params)
    for split, ds in out.items():
        write_voc(ds, root, split)
    counts = {split: (len(ds), ds.num_objects) for split, ds in out.items()}
    Path(root, "README.md").write_text(_readme(Path(root), counts, {"n_train": n_train, "n_test": n_test, **params, "seed": seed}),
                                       encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resprout.data.detection.canvas",
                                     description="Write the Fashion-MNIST canvas detection set as a VOC folder.")
    parser.add_argument("root", help="the folder to write (Annotations/, JPEGImages/, ImageSets/Main/)")
    parser.add_argument("--fashion", default=None, help="Fashion-MNIST IDX folder (default: where the source looks)")
    parser.add_argument("--train", type=int, default=2000, help="train canvases (default 2000)")
    parser.add_argument("--test", type=int, default=500, help="test canvases (default 500)")
    parser.add_argument("--size", type=int, default=128, help="canvas side in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from resprout.errors import ResproutError

    try:
        made = write_fashion_canvas_voc(args.root, fashion_path=args.fashion, n_train=args.train, n_test=args.test,
                                        canvas_size=args.size, seed=args.seed)
    except ResproutError as e:
        print(f"resprout: error: {e}", file=sys.stderr)
        return e.exit_code
    for split, ds in made.items():
        print(f"{split}: {len(ds)} canvases, {ds.num_objects} objects")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
