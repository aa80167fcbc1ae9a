"""Fashion-MNIST re-identification: an open-set retrieval analog of Market-1501 made of real images.

Market-1501 and DukeMTMC-reID cannot be downloaded here. Re-identification asks: given one image of an individual
seen by one camera, find the other images of *that individual* seen by other cameras, among many similar-looking
others, for individuals never seen in training. The analog keeps each of those parts:

* **an identity is one Fashion-MNIST item** (one photographed garment), as an identity is one person: identities of a
  class look alike, as people in dark clothes do, so retrieval must tell individuals apart, not classes;
* **cameras are fixed views** (:data:`CAMERAS`): each renders every item with its own scale, offset, mirror, focus and
  exposure, as a surveillance camera has its own distance, angle and lighting; each image adds its own jitter
  (position, size, rotation) and sensor noise, so two images from one camera differ too;
* **open set**: train identities come from Fashion-MNIST's train images of ``train_classes`` (by default the first
  five classes, the metric-learning convention of training on the first half of the classes, as on CUB-200 and
  Cars196), query and gallery identities from its test images of the other classes, so neither the individuals
  nor their kinds of garment are seen in training;
* **the protocol**: each test identity has ``per_camera`` images from every camera; one image from each of
  ``query_cameras`` cameras is a query, the rest are gallery; distractor identities appear only in the gallery, as
  Duke's 408 do. Same-camera matches are excluded at evaluation (:mod:`resprout.metrics.reid`).

What it is not: the views are synthetic transformations of one photograph, not new photographs; the images are
32x32 grayscale; there is no occlusion or background clutter (docs/vision.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from resprout.data.dataset import Dataset
from resprout.data.reid.dataset import ReidDataset, ReidSplit

__all__ = ["CAMERAS", "Camera", "fashion_reid", "render_views"]

SIZE = 32  # rendered side; the 28x28 items sit in its middle before the camera's transformation


class Camera(NamedTuple):
    """A fixed view: ``scale`` (>1: closer), ``shift`` (x, y pixels), ``mirror``, Gaussian ``blur`` sigma (pixels),
    and exposure: a pixel v in [0, 255] becomes ``gain * v + offset``."""

    scale: float
    shift: tuple[float, float]
    mirror: bool
    blur: float
    gain: float
    offset: float


CAMERAS = (
    Camera(scale=1.00, shift=(0, 0), mirror=False, blur=0.0, gain=1.00, offset=0),    # near, sharp, well lit
    Camera(scale=0.80, shift=(2, -2), mirror=False, blur=0.0, gain=0.75, offset=40),  # farther, hazy
    Camera(scale=1.15, shift=(-2, 1), mirror=True, blur=1.0, gain=1.00, offset=0),    # close, other side, soft focus
    Camera(scale=0.90, shift=(1, 2), mirror=False, blur=0.6, gain=0.60, offset=10),   # dim
)
JITTER_SHIFT = 2.0  # pixels, uniform in +-
JITTER_SCALE = 0.07  # relative, uniform in +-
JITTER_ROTATION = 8.0  # degrees, uniform in +-
NOISE = 8.0  # sensor noise, std in pixel units (0..255)


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))


def render_views(items: torch.Tensor, cameras: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Images of ``items`` (uint8 (N, 1, 28, 28)) as camera ``cameras[i]`` (an index into :data:`CAMERAS`) sees
    item ``i``, with per-image jitter and noise drawn from ``generator``: uint8 (N, 1, 32, 32)."""
    n = len(items)
    x = F.pad(items.float(), [(SIZE - items.shape[-1]) // 2] * 4)
    cam = [CAMERAS[c] for c in cameras]
    u = torch.rand(n, 4, generator=generator) * 2 - 1  # shift x, shift y, scale, rotation, each in [-1, 1]
    scale = torch.tensor([c.scale for c in cam]) * (1 + JITTER_SCALE * u[:, 2])
    angle = torch.deg2rad(JITTER_ROTATION * u[:, 3])
    mirror = torch.tensor([-1.0 if c.mirror else 1.0 for c in cam])
    shift = torch.tensor([c.shift for c in cam], dtype=torch.float32) + JITTER_SHIFT * u[:, :2]
    # affine_grid maps output coordinates to input ones (normalised to [-1, 1]): the inverse of the view
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) / scale * mirror
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale * mirror
    theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, :, 2] = -shift * 2 / SIZE
    grid = F.affine_grid(theta, [n, 1, SIZE, SIZE], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    for index, c in enumerate(CAMERAS):
        chosen = torch.tensor([k for k, i in enumerate(cameras) if i == index], dtype=torch.int64)
        if len(chosen) and c.blur > 0:
            out[chosen] = _blur(out[chosen], c.blur)
    gain = torch.tensor([c.gain for c in cam]).view(n, 1, 1, 1)
    offset = torch.tensor([c.offset for c in cam], dtype=torch.float32).view(n, 1, 1, 1)
    out = out * gain + offset + NOISE * torch.randn(out.shape, generator=generator)
    return out.round().clamp(0, 255).to(torch.uint8)


def _split(items: torch.Tensor, ids: list[int], per_camera: int, generator: torch.Generator,
           id_base: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every identity (``items[k]`` is identity ``id_base + k``) seen ``per_camera`` times by every camera, in order
    identity, camera, repeat: (images, ids, cameras 1-based)."""
    n_cams = len(CAMERAS)
    source = torch.arange(len(ids)).repeat_interleave(n_cams * per_camera)
    cameras = torch.arange(n_cams).repeat_interleave(per_camera).repeat(len(ids))
    images = render_views(items[source], cameras.tolist(), generator)
    return images, source + id_base, cameras + 1


def fashion_reid(fashion: Dataset | None = None, *, fashion_path: str | os.PathLike | None = None,
                 train_classes: Sequence[int] = (0, 1, 2, 3, 4), n_train_ids: int = 500, n_test_ids: int = 500,
                 n_distractor_ids: int = 250, per_camera: int = 2, query_cameras: int = 2,
                 seed: int = 0) -> ReidDataset:
    """The Fashion-MNIST re-id set (module docstring). ``fashion`` is the ``fashion-mnist`` source's dataset (read
    from ``fashion_path`` or where the source looks when not given). Identities are numbered 1.. (train first, then
    test, then distractors); cameras 1..4; names ``<split>_<index>``."""
    from resprout.errors import ConfigError

    if fashion is None:  # the source's own module: the package of sources registers this set's source too
        from resprout.data.sources.idx import fashion_mnist

        fashion = fashion_mnist(fashion_path)
    n_classes = fashion.num_classes
    train_set = sorted({int(c) for c in train_classes})
    test_set = [c for c in range(n_classes) if c not in train_set]
    if not train_set or not test_set or train_set[0] < 0 or train_set[-1] >= n_classes:
        raise ConfigError(f"train_classes must be a proper, non-empty subset of 0..{n_classes - 1}; got "
                          f"{list(train_classes)}")
    if not 1 <= query_cameras < len(CAMERAS):
        raise ConfigError(f"query_cameras must be 1..{len(CAMERAS) - 1} (a query needs another camera to be found "
                          f"in), got {query_cameras}")
    if per_camera < 1 or min(n_train_ids, n_test_ids) < 1 or n_distractor_ids < 0:
        raise ConfigError("per_camera, n_train_ids and n_test_ids must be at least 1, n_distractor_ids at least 0")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)

    def pick(split, classes, count, what):
        pool = np.flatnonzero(np.isin(split.labels.numpy(), classes))
        if count > len(pool):
            raise ConfigError(f"{what}: {count} identities asked, {len(pool)} images of classes {classes}")
        return split.images[torch.from_numpy(np.sort(rng.choice(pool, size=count, replace=False)))]

    train_items = pick(fashion.train, train_set, n_train_ids, "n_train_ids")
    test_pool = pick(fashion.test, test_set, n_test_ids + n_distractor_ids, "n_test_ids + n_distractor_ids")
    perm = torch.from_numpy(rng.permutation(len(test_pool)))
    test_items, distractor_items = test_pool[perm[:n_test_ids]], test_pool[perm[n_test_ids:]]

    train = _split(train_items, list(range(n_train_ids)), per_camera, generator, 1)
    test = _split(test_items, list(range(n_test_ids)), per_camera, generator, 1 + n_train_ids)
    # the query of each test identity: the first image of each of `query_cameras` cameras drawn without replacement
    n_cams = len(CAMERAS)
    is_query = torch.zeros(len(test[0]), dtype=torch.bool)
    for k in range(n_test_ids):
        for c in rng.choice(n_cams, size=query_cameras, replace=False):
            is_query[(k * n_cams + int(c)) * per_camera] = True
    gallery_parts = [tuple(t[~is_query] for t in test)]
    if n_distractor_ids:
        gallery_parts.append(_split(distractor_items, list(range(n_distractor_ids)), per_camera, generator,
                                    1 + n_train_ids + n_test_ids))
    gallery = tuple(torch.cat(parts) for parts in zip(*gallery_parts, strict=True))
    query = tuple(t[is_query] for t in test)

    def make(split_name, parts):
        images, ids, cams = parts
        return ReidSplit(images.contiguous(), ids.long(), cams.long(), [f"{split_name}_{i}" for i in range(len(ids))])

    return ReidDataset(f"fashion-reid(seed={seed})", make("train", train), make("query", query),
                       make("gallery", gallery))
