"""Augmentation of training batches, a pure function of the position in training.

* Images of one size (digits, CIFAR, ...): batched tensor augmentation, one call per batch, no per-image Python
  loop (:func:`random_crop` with zero padding, :func:`random_flip`). Random values come from the generator the
  loader passes in (seeded by run, generation, epoch and step), so the same step always draws the same crops and
  flips, before and after a resume.
* Photographs at their own sizes (``augment=imagenet``): :func:`train_view` and :func:`eval_view`, one image at a
  time, each from its own seeded generator (see the section below).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int, g: torch.Generator) -> torch.Tensor:
    """Zero-pad every image by ``padding`` and cut a random window of the original size (per image)."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=g).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=g).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # n,1,h,1
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # n,1,1,w
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


#: sources of photographs at their own sizes, whose ``augment=auto`` is ``imagenet`` (the KE paper's five datasets)
NATURAL_SOURCES = ("cub200", "flower102", "fgvc-aircraft", "mit67", "stanford-dogs")


def resolve_augment(augment: str, source: str) -> str:
    """The augmentation a run uses: ``augment``, or the source's default for ``auto``."""
    return default_augment(source) if augment == "auto" else augment


def default_augment(source: str) -> str:
    """What ``augment=auto`` means per source: no flips for digits (a mirrored 2 is not a 2); the random resized
    crop for the photographs of the KE paper's datasets."""
    if source.strip().lower().replace("_", "-") in NATURAL_SOURCES:
        return "imagenet"
    if source in ("digits", "mnist"):
        return "crop"
    if source == "synthetic" or source == "user" or source.startswith("user:"):
        return "none"  # data from Python code: resprout cannot know which flips keep a label, so none by default
    return "crop+flip"


# -- natural images (augment=imagenet) ---------------------------------------------------------------------------
# The recipe of ImageNet training that the Knowledge Evolution code uses for its five datasets (its
# data/custom_dataset.py): RandomResizedCrop(224) + horizontal flip for training, Resize(256) + CenterCrop(224) for
# evaluation. Images keep their aspect ratio, so these work one image at a time (a batch of 32 is 32 small calls),
# on stored (H, W, C) uint8 images, cropped and resized by Pillow as torchvision does on PIL images;
# each image draws from its own generator, seeded by (seed, generation, epoch, step, position in the global
# batch), so a crop does not depend on the other images of the batch, on the number of processes, or on whether
# it is computed in the training process or in a DataLoader worker.

#: RandomResizedCrop's default ranges (torchvision): area fraction and aspect ratio (width / height) of the crop
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
#: evaluation resizes the short side to size * 256 / 224 before the center crop (Resize(256) for 224 crops)
EVAL_RESIZE = 256.0 / 224.0
#: the crop size when ``image_size`` is not given
DEFAULT_CROP = 224
_ATTEMPTS = 10


def stored_short_side(size: int) -> int:
    """The short side images are stored at for crops of ``size``: 256 for 224 (the evaluation resize)."""
    return int(round(size * EVAL_RESIZE))


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) of an image whose short side is resized to ``short``; the long side keeps the aspect ratio,
    truncated to an integer (as torchvision's ``Resize(int)`` does)."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def random_resized_crop_box(height: int, width: int, g: torch.Generator, scale: tuple[float, float] = CROP_SCALE,
                            ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of a random resized crop (Szegedy et al., "Going deeper with
    convolutions", 2015, Sec. 6; torchvision's ``RandomResizedCrop.get_params``).

    Up to 10 attempts each draw an area fraction uniform in ``scale`` and a log aspect ratio uniform in
    ``log(ratio)`` (two float64 uniforms from ``g``, in that order); the first box that fits in the image is placed
    uniformly (``torch.randint`` for the top, then the left). If none fits, the central box of the whole image,
    clipped to the ratio range, is used. Widths and heights are rounded to the nearest integer."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(_ATTEMPTS):
        u = torch.rand(2, generator=g, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            return top, left, h, w
    # fallback: as much of the image as the ratio range allows, centered
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of the central ``size`` x ``size`` box (torchvision's ``CenterCrop`` rounding)."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def _pil(image: torch.Tensor):
    """A stored (H, W, C) uint8 image as a Pillow image (mode L or RGB)."""
    from PIL import Image

    arr = image.numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def _chw(im) -> torch.Tensor:
    """A Pillow image as a uint8 (C, H, W) tensor."""
    arr = np.asarray(im)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.array(arr, order="C"))  # a writable copy (Pillow's array is read-only)


def resized_crop(image: torch.Tensor, top: int, left: int, height: int, width: int,
                 size: tuple[int, int]) -> torch.Tensor:
    """The box of a stored (H, W, C) uint8 image resized to ``size`` (height, width) as a uint8 (C, H, W) tensor:
    crop, then Pillow's bilinear (antialiased) resize, as torchvision's ``resized_crop`` does on PIL images."""
    from PIL import Image

    im = _pil(image).crop((left, top, left + width, top + height))
    if im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return _chw(im)


def train_view(image: torch.Tensor, size: int, g: torch.Generator, flip: bool = True) -> torch.Tensor:
    """A training view of one stored (H, W, C) image, as uint8 (C, size, size): a random resized crop, then a
    left-right mirror with probability 1/2 (one more float64 uniform from ``g``, below 0.5 mirrors)."""
    h, w, _ = image.shape
    top, left, ch, cw = random_resized_crop_box(h, w, g)
    out = resized_crop(image, top, left, ch, cw, (size, size))
    if flip and float(torch.rand(1, generator=g, dtype=torch.float64)) < 0.5:
        out = out.flip(2)
    return out


def eval_view(image: torch.Tensor, size: int) -> torch.Tensor:
    """The evaluation view of one stored (H, W, C) image, as uint8 (C, size, size): the short side resized to
    ``stored_short_side(size)`` (when it is not already), then the central ``size`` x ``size`` box."""
    from PIL import Image

    h, w, _ = image.shape
    short = stored_short_side(size)
    if min(h, w) != short:
        h, w = short_side_size(h, w, short)
        image = torch.from_numpy(np.asarray(_pil(image).resize((w, h), Image.Resampling.BILINEAR)).copy())
        image = image[:, :, None] if image.dim() == 2 else image
    top, left = center_crop_box(h, w, size)
    return image[top:top + size, left:left + size].permute(2, 0, 1).contiguous()
