"""Batched tensor augmentation: one call per batch, no per-image Python loop.

Random values come from the generator the loader passes in (seeded by run, generation, epoch and step), so the
same step always draws the same crops and flips, before and after a resume.
"""

from __future__ import annotations

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


def default_augment(source: str) -> str:
    """What ``augment=auto`` means per source: no flips for digits (a mirrored 2 is not a 2)."""
    if source in ("digits", "mnist"):
        return "crop"
    if source == "synthetic" or source == "user" or source.startswith("user:"):
        return "none"  # data from Python code: resprout cannot know which flips keep a label, so none by default
    return "crop+flip"
