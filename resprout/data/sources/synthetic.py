"""The ``synthetic`` source: random class prototypes plus noise, for tests and quick experiments."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from resprout.data.dataset import Dataset, Split, make_split
from resprout.data.sources.registry import register_source
from resprout.errors import ConfigError
from resprout.options import Spec

# The class signal lives on a coarse 4x4 grid (bilinearly upsampled to the image size): each class has a random
# prototype there, and every image adds its own coarse noise (which sets how separable the classes are, whatever
# the image size) and per-pixel noise. Values are in gray levels around 128.
_SYNTH_GRID = 4
_SYNTH_SIGNAL = 24.0
_SYNTH_COARSE_NOISE = 28.0
_SYNTH_PIXEL_NOISE = 16.0


@register_source("synthetic", options={
    "num_classes": Spec(int, min=2), "n_train": Spec(int, min=1), "n_test": Spec(int, min=1),
    "image_size": Spec(int, min=2), "channels": Spec(int, choices=(1, 3)), "seed": Spec(int, min=0)})
def _synthetic(*, num_classes: int = 10, n_train: int = 500, n_test: int = 200, image_size: int = 8,
               channels: int = 1, seed: int = 0) -> Dataset:
    """Random class prototypes plus noise, deterministic from ``seed``: learnable by a small CNN within a couple
    of epochs, but too noisy for 100%. Classes are balanced (up to one image); the test set does not depend on
    ``n_train`` and neither split depends on the other's size."""
    k, s, c = num_classes, image_size, channels
    if n_train < k:  # every class needs a training image
        raise ConfigError(f"data source 'synthetic': bad value for n_train: {n_train!r} (must be >= num_classes={k})")
    proto_ss, train_ss, test_ss = np.random.SeedSequence([seed, 0x5F17]).spawn(3)
    g = min(_SYNTH_GRID, s)
    # Same separability for 1 and 3 channels: the signal per channel shrinks as the channels add up.
    signal = _SYNTH_SIGNAL / math.sqrt(c)
    prototypes = signal * np.random.default_rng(proto_ss).standard_normal((k, c, g, g))

    def draw(ss: np.random.SeedSequence, n: int) -> Split:
        rng = np.random.default_rng(ss)
        labels = rng.permutation(np.arange(n) % k)
        coarse = prototypes[labels] + _SYNTH_COARSE_NOISE * rng.standard_normal((n, c, g, g))
        fine = F.interpolate(torch.from_numpy(coarse.astype(np.float32)), size=(s, s), mode="bilinear",
                             align_corners=False).numpy()
        images = 128.0 + fine + _SYNTH_PIXEL_NOISE * rng.standard_normal((n, c, s, s))
        return make_split(np.clip(np.rint(images), 0, 255).astype(np.uint8), labels.astype(np.int64))

    return Dataset(name="synthetic", train=draw(train_ss, n_train), test=draw(test_ss, n_test), val=None,
                   classes=[str(i) for i in range(k)])
