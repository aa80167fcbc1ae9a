"""augment=imagenet, one image at a time: the random resized crop's sampling rule, the crop and resize, the
evaluation view, images stored at their short side, and the training loader's batches as a function of the
position in training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resprout.data.augment import (center_crop_box, eval_view, random_resized_crop_box, resized_crop,
                                   short_side_size, stored_short_side, train_view)
from resprout.data.loader import Normalizer
from resprout.data.natural import NaturalTrainLoader, StoredImages, read_stored
from resprout.data.samplers import make_sampler, random_batches
from resprout.seeding import generator


def reference_box(h: int, w: int, g: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision's documented RandomResizedCrop.get_params (scale (0.08, 1), ratio (3/4, 4/3)), written out
    again: ten tries of an area fraction uniform in the scale range and an aspect ratio log-uniform in the ratio
    range, the first box that fits placed uniformly; else the whole image cut to the nearest allowed ratio, centered.
    Draws: two float64 uniforms per try, then the top and the left offsets."""
    lo, hi = 3 / 4, 4 / 3
    for _ in range(10):
        u_area, u_ratio = torch.rand(2, generator=g, dtype=torch.float64).tolist()
        fraction = 0.08 + 0.92 * u_area
        aspect = lo * (hi / lo) ** u_ratio  # log-uniform between lo and hi
        cw = round((h * w * fraction * aspect) ** 0.5)
        ch = round((h * w * fraction / aspect) ** 0.5)
        if 1 <= cw <= w and 1 <= ch <= h:
            top = torch.randint(h - ch + 1, (1,), generator=g).item()
            left = torch.randint(w - cw + 1, (1,), generator=g).item()
            return top, left, ch, cw
    if w / h < lo:
        ch, cw = round(w / lo), w
    elif w / h > hi:
        ch, cw = h, round(h * hi)
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


SIZES = [(256, 341), (341, 256), (256, 256), (37, 49), (10, 1000), (1000, 10), (1, 1), (3, 2), (500, 375)]


@pytest.mark.parametrize("h,w", SIZES)
def test_random_resized_crop_follows_torchvisions_rule(h, w):
    fallbacks = 0
    for seed in range(300):
        ours, ref = generator(seed, h, w), generator(seed, h, w)
        box = random_resized_crop_box(h, w, ours)
        assert box == reference_box(h, w, ref), (seed, box)
        assert torch.equal(ours.get_state(), ref.get_state())  # the same number of draws
        top, left, ch, cw = box
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch >= 1 and cw >= 1
        fallbacks += (top, left) == ((h - ch) // 2, (w - cw) // 2) and (ch == h or cw == w)
    if max(h, w) / min(h, w) > 4 / 3 * 8:  # no box of area >= 8% fits: always the central fallback
        assert fallbacks == 300


def test_random_resized_crop_area_and_ratio_are_uniform_in_their_ranges():
    """Without reference to how the draws are made: every box with an area fraction up to 0.7 fits a square image
    at any allowed ratio (a box is refused only when fraction > min(ratio, 1 / ratio) >= 3/4), so among the boxes
    with fraction <= 0.7 the fraction is uniform on [0.08, 0.7] and the log aspect ratio on [log 3/4, log 4/3]:
    their deciles over 4,000 draws lie within 0.03 of the uniform ones."""
    fractions, logs = [], []
    for seed in range(4000):
        _, _, ch, cw = random_resized_crop_box(2000, 2000, generator(seed))
        if ch * cw / 2000 ** 2 <= 0.7:
            fractions.append(ch * cw / 2000 ** 2)
            logs.append(math.log(cw / ch))
    deciles = np.linspace(0.1, 0.9, 9)
    f = (np.quantile(fractions, deciles) - 0.08) / (0.7 - 0.08)
    r = (np.quantile(logs, deciles) - math.log(3 / 4)) / (math.log(4 / 3) - math.log(3 / 4))
    assert len(fractions) > 2000
    assert np.all(np.abs(f - deciles) < 0.03), f
    assert np.all(np.abs(r - deciles) < 0.03), r


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = 60 * np.sin(xx / 5.0)[..., None] * np.array([1.0, 0.5, -1.0]) + 40 * np.cos(yy / 7.0)[..., None]
    return np.clip(128 + smooth + 25 * rng.standard_normal((h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("box,size", [((5, 7, 40, 50), (16, 16)), ((0, 0, 60, 80), (37, 49)),
                                      ((2, 3, 10, 12), (40, 40)), ((10, 0, 30, 80), (30, 80))])
def test_resized_crop_is_crop_then_antialiased_bilinear(box, size):
    """Pillow's crop then bilinear resize (what torchvision's RandomResizedCrop does on PIL images), against torch's
    antialiased bilinear interpolation of the cropped box: at most one gray level apart, equal at the same size."""
    img = _photo(60, 80)
    top, left, ch, cw = box
    ours = resized_crop(torch.from_numpy(img), top, left, ch, cw, size)
    cut = torch.from_numpy(img[top:top + ch, left:left + cw]).permute(2, 0, 1)[None].float()
    ref = F.interpolate(cut, size=size, mode="bilinear", align_corners=False, antialias=True)[0].round().clamp(0, 255)
    assert ours.dtype == torch.uint8 and tuple(ours.shape) == (3, *size)
    diff = (ours.float() - ref).abs()
    assert diff.max() <= 1
    if (ch, cw) == size:
        assert diff.max() == 0  # no resampling at the same size


def test_short_side_and_center_crop_follow_resize_256_and_center_crop_224():
    assert stored_short_side(224) == 256 and stored_short_side(32) == 37
    # Resize(256) of 500x375 (w x h): the short side (height) becomes 256, the width int(256 * 500 / 375) = 341
    assert short_side_size(375, 500, 256) == (256, 341)
    assert short_side_size(500, 375, 256) == (341, 256)
    assert short_side_size(300, 300, 256) == (256, 256)
    # CenterCrop(224) of 256x341: top round(32/2) = 16, left round(117/2) = round(58.5) = 58 (half to even)
    assert center_crop_box(256, 341, 224) == (16, 58)
    stored = torch.from_numpy(_photo(256, 341))  # stored images are (H, W, C)
    assert torch.equal(eval_view(stored, 224), stored[16:240, 58:282].permute(2, 0, 1))


def test_eval_view_resizes_an_image_stored_at_another_short_side():
    img = _photo(60, 80)
    view = eval_view(torch.from_numpy(img), 32)  # short side 60 -> 37 (long int(37 * 80 / 60) = 49), then the central 32x32
    resized = np.asarray(Image.fromarray(img).resize((49, 37), Image.Resampling.BILINEAR)).astype(int)
    top, left = round((37 - 32) / 2), round((49 - 32) / 2)
    diff = np.abs(view.permute(1, 2, 0).numpy().astype(int) - resized[top:top + 32, left:left + 32])
    assert view.shape == (3, 32, 32) and diff.max() <= 1


def test_train_view_is_the_reference_crop_then_a_coin_flip():
    stored = torch.from_numpy(_photo(40, 56))
    flips = 0
    for seed in range(40):
        g, ref = generator(seed), generator(seed)
        view = train_view(stored, 24, g)
        top, left, ch, cw = reference_box(40, 56, ref)
        crop = resized_crop(stored, top, left, ch, cw, (24, 24))
        mirrored = torch.rand(1, generator=ref, dtype=torch.float64).item() < 0.5
        assert torch.equal(view, crop.flip(2) if mirrored else crop)
        flips += mirrored
    assert 0 < flips < 40


def test_images_are_stored_at_their_short_side(tmp_path):
    img = _photo(300, 400)
    Image.fromarray(img).save(tmp_path / "a.png")
    png = read_stored(tmp_path / "a.png", "RGB", 37)
    expect = np.asarray(Image.fromarray(img).resize((49, 37), Image.Resampling.BILINEAR))
    assert png.dtype == torch.uint8 and tuple(png.shape) == (37, 49, 3)
    assert np.array_equal(png.numpy(), expect)  # PNG: decoded whole, then resized
    gray = read_stored(tmp_path / "a.png", "L", 37)
    assert tuple(gray.shape) == (37, 49, 1)
    assert np.array_equal(gray[:, :, 0].numpy(), np.asarray(Image.fromarray(img).convert("L").resize(
        (49, 37), Image.Resampling.BILINEAR)))


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_close_to_the_full_decode(tmp_path):
    """A JPEG many times larger than needed is decoded at 1/2, 1/4 or 1/8 scale (libjpeg), to no less than twice
    the stored size, then resized: on a photograph, within 2 gray levels on average of a full decode + resize."""
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().images[0]  # 427 x 640
    Image.fromarray(photo).save(tmp_path / "a.jpg", quality=90)
    stored = read_stored(tmp_path / "a.jpg", "RGB", 64)
    with Image.open(tmp_path / "a.jpg") as im:
        full = np.asarray(im.convert("RGB").resize((95, 64), Image.Resampling.BILINEAR)).astype(int)
    assert tuple(stored.shape) == (64, 95, 3)
    assert np.abs(stored.numpy().astype(int) - full).mean() < 2


def _stored(n: int = 10) -> StoredImages:
    sizes = [(37, 49), (49, 37), (37, 37), (37, 60)]
    return StoredImages([torch.from_numpy(_photo(*sizes[i % 4], seed=i)) for i in range(n)])


def _loader(images, labels, **kw) -> NaturalTrainLoader:
    norm = Normalizer.from_stats([0.5] * 3, [0.25] * 3, torch.device("cpu"))
    return NaturalTrainLoader(images, labels, size=32, batch_size=4, normalizer=norm, seed=7, **kw)


def test_a_batch_is_a_function_of_the_position_alone():
    """Batch (g, e, s) is the epoch's seeded order (the random sampler with generator(seed, 0, g, e)) and, for the
    image at position p, its view from generator(seed, 1, g, e, s, p); whatever was asked before."""
    images, labels = _stored(), torch.arange(10) % 3
    loader = _loader(images, labels)
    for g_, e, s in [(0, 0, 0), (0, 1, 2), (1, 0, 1)]:
        order = random_batches(labels, 4, generator(7, 0, g_, e))
        expect = torch.stack([train_view(images[i], 32, generator(7, 1, g_, e, s, p))
                              for p, i in enumerate(order[s].tolist())])
        x, y = loader.views(g_, e, s)
        assert torch.equal(x, expect) and torch.equal(y, labels[order[s]])
    fresh = _loader(images, labels)
    assert torch.equal(fresh.batch(1, 0, 1)[0], loader.batch(1, 0, 1)[0])
    x, _ = loader.batch(0, 0, 0)
    assert x.shape == (4, 3, 32, 32) and loader.input_shape == (3, 32, 32)
    assert torch.allclose(x, (loader.views(0, 0, 0)[0].float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_two_processes_take_the_two_halves_of_the_same_views():
    """Under torchrun each rank takes its share of the global batch, with the views the global batch has: a view
    depends on the position in the global batch, not on the rank."""
    images, labels = _stored(), torch.arange(10) % 3
    for sampler in (None, make_sampler("class_pair")):
        whole = _loader(images, labels, sampler=sampler)
        parts = [_loader(images, labels, sampler=sampler, rank=r, world_size=2) for r in (0, 1)]
        for s in range(whole.steps(0, 0)):
            x, y = whole.views(0, 0, s)
            shares = [p.views(0, 0, s) for p in parts]
            if sampler is None:
                assert torch.equal(torch.cat([a for a, _ in shares]), x)
                assert torch.equal(torch.cat([b for _, b in shares]), y)
            else:  # anchors and partners are split alike: rank r has the r-th half of each
                half = len(y) // 2
                a0, a1 = shares[0][0], shares[1][0]
                assert torch.equal(torch.cat([a0[:len(a0) // 2], a1[:len(a1) // 2]]), x[:half])
                assert torch.equal(torch.cat([a0[len(a0) // 2:], a1[len(a1) // 2:]]), x[half:])
