"""In-memory loading: determinism by position, augmentation, samplers, sharding."""

from __future__ import annotations

import torch

from resprout.data.augment import random_crop, random_flip
from resprout.data.loader import EvalLoader, Normalizer, TrainLoader
from resprout.data.samplers import class_pair_batches, make_sampler, pk_batches, random_batches
from resprout.seeding import generator


def make_loader(n=100, **kw):
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=generator(99))
    labels = torch.arange(n) % 5
    norm = Normalizer.from_stats([0.5], [0.25], torch.device("cpu"))
    args = dict(batch_size=16, normalizer=norm, seed=7, augment="crop+flip", crop_padding=2)
    args.update(kw)
    return TrainLoader(images, labels, **args), images, labels


def test_batches_are_a_function_of_the_position():
    loader, _, _ = make_loader()
    a = list(loader.batches(0, 3))
    b = list(loader.batches(0, 3, start=4))  # a resumed epoch starts mid-way and sees the same batches
    for (xa, ya), (xb, yb) in zip(a[4:], b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other, _, _ = make_loader()
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, other.batches(0, 3)))
    assert not torch.equal(a[0][1], next(loader.batches(0, 4))[1])  # a new epoch reshuffles
    assert not torch.equal(a[0][1], next(loader.batches(1, 3))[1])  # and so does a new generation


def test_an_epoch_visits_every_image_once():
    loader, _, labels = make_loader(n=70)
    seen = torch.cat([y for _, y in loader.batches(0, 0)])
    assert len(seen) == 70 and torch.equal(seen.sort().values, labels.sort().values)


def test_normalization_matches_the_formula():
    loader, images, labels = make_loader(augment="none")
    x, y = loader.batch(0, 0, 0)
    idx = loader.plan(0, 0)[0]
    expected = (images[idx].float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expected, atol=1e-5) and torch.equal(y, labels[idx])


def test_random_crop_shifts_within_the_padding_and_flip_mirrors():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    out = random_crop(x, 1, generator(0))
    assert out.shape == x.shape
    for i in range(2):  # each output is a window of the zero-padded input
        padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1))
        windows = [padded[:, dy:dy + 4, dx:dx + 4] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = random_flip(x.repeat(32, 1, 1, 1), generator(1))
    n_flipped = sum(torch.equal(f, x[0].flip(2)) or torch.equal(f, x[1].flip(2)) for f in flipped)
    assert 8 < n_flipped < 56


def test_pk_batches_hold_p_classes_of_k_images():
    labels = torch.arange(200) % 10
    batches = pk_batches(labels, p=4, k=5, g=generator(0))
    assert len(batches) == 200 // 20
    for b in batches:
        cls, counts = labels[b].unique(return_counts=True)
        assert len(cls) == 4 and (counts == 5).all() and len(b.unique()) == 20
    small = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1])  # class 0 has fewer than k images: repeats, still k of it
    for b in pk_batches(small, p=2, k=3, g=generator(1)):
        assert sorted(small[b].tolist()) == [0, 0, 0, 1, 1, 1]


def test_class_pair_batches_pair_each_anchor_with_another_image_of_its_class():
    labels = torch.arange(60) % 6
    for b in class_pair_batches(labels, 8, generator(2)):
        half = len(b) // 2
        anchors, partners = b[:half], b[half:]
        assert torch.equal(labels[anchors], labels[partners])
        assert (anchors != partners).all()


def test_samplers_plug_into_the_loader():
    loader, _, labels = make_loader(sampler=make_sampler("class_pair"))
    x, y = loader.batch(0, 0, 0)
    assert len(y) == 32 and torch.equal(y[:16], y[16:])


def test_distributed_shards_split_every_global_batch():
    full, _, _ = make_loader(augment="none")
    parts = [make_loader(augment="none", rank=r, world_size=2)[0] for r in range(2)]
    for step in range(full.steps(0, 0)):
        x, y = full.batch(0, 0, step)
        xs = torch.cat([p.batch(0, 0, step)[0] for p in parts])
        assert torch.equal(x, xs)
    ev = [EvalLoader(torch.zeros(9, 1, 2, 2, dtype=torch.uint8), torch.arange(9), batch_size=4,
                     normalizer=Normalizer.from_stats([0.0], [1.0], torch.device("cpu")), rank=r, world_size=2)
          for r in range(2)]
    assert sorted(torch.cat([y for e in ev for _, y in e]).tolist()) == list(range(9))


def test_random_batches_drop_last():
    labels = torch.zeros(10)
    assert [len(b) for b in random_batches(labels, 4, generator(0))] == [4, 4, 2]
    assert [len(b) for b in random_batches(labels, 4, generator(0), drop_last=True)] == [4, 4]
