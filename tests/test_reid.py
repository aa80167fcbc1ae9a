"""Re-identification: Market-1501 and DukeMTMC-reID folders generated here (names, junk and distractors as the
benchmark defines them, every refusal one DataError line), CMC and mAP against a hand-computed ranking and against a
brute-force loop with scikit-learn's average precision, and the Fashion-MNIST open-set analog written in Market-1501's
names and read back."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from resprout.data.reid import read_dukemtmc, read_market1501, write_market1501
from resprout.data.reid.fashion import CAMERAS, fashion_reid
from resprout.data.reid.folders import parse_name
from resprout.errors import DataError
from resprout.metrics.reid import reid_metrics
from tests.conftest import FASHION_DIR, needs_fashion


def one_line_error(call, *fragments, kind=DataError) -> str:
    with pytest.raises(kind) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


def test_file_names_follow_each_benchmark():
    assert parse_name("0002_c1s1_000451_03.jpg", "market1501") == (2, 1)
    assert parse_name("-1_c3s2_012345_01.jpg", "market1501") == (-1, 3)
    assert parse_name("0005_c2_f0046985.jpg", "dukemtmc") == (5, 2)
    one_line_error(lambda: parse_name("0005_c2_f0046985.jpg", "market1501"),
                   "has no identity", "e.g. 0002_c1s1_000451_03.jpg")
    one_line_error(lambda: parse_name("person.jpg", "dukemtmc"), "person.jpg has no identity")


def market_folder(root, files: dict[str, list[str]], size=(16, 8)):
    """A Market-1501 folder of small images, each a different gray level so the reader's order can be checked."""
    value = 0
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            value += 1
            h, w = size if not isinstance(size, dict) else size[name]
            Image.new("RGB", (w, h), (value, value, value)).save(root / folder / name)
    return root


MARKET = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000500_01.jpg", "0007_c3s1_000001_01.jpg"],
    "query": ["0001_c1s1_001051_00.jpg", "0003_c2s1_000010_00.jpg"],
    "bounding_box_test": ["-1_c1s1_000401_03.jpg", "0000_c1s1_000102_02.jpg", "0001_c1s1_001101_01.jpg",
                          "0001_c4s2_000301_02.jpg", "0003_c5s1_004400_01.jpg", "0003_c2s3_000060_04.jpg"],
}


def test_a_market1501_folder_reads_with_its_junk_and_distractors(tmp_path):
    root = market_folder(tmp_path / "market", MARKET)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"\0")  # Market-1501 ships some; not an image
    ds = read_market1501(root)
    assert ds.train.ids.tolist() == [2, 2, 7] and ds.train.cameras.tolist() == [1, 2, 3]
    assert ds.query.ids.tolist() == [1, 3] and ds.query.cameras.tolist() == [1, 2]
    # junk (-1) left out and counted; the distractor (0000) kept as identity 0; sorted file names give the order
    assert ds.junk == 1 and ds.gallery.ids.tolist() == [0, 1, 1, 3, 3]
    assert ds.gallery.cameras.tolist() == [1, 1, 4, 2, 5]
    assert ds.gallery.names[0] == "0000_c1s1_000102_02.jpg" and ds.gallery.images.shape == (5, 3, 16, 8)
    assert ds.gallery.images[:, 0, 0, 0].tolist() == [7, 8, 9, 11, 10]  # written in listing order, read sorted
    labels, identities = ds.train.train_labels()
    assert labels.tolist() == [0, 0, 1] and identities == [2, 7]


def test_a_dukemtmc_folder_needs_a_size_when_crops_differ(tmp_path):
    files = {"bounding_box_train": ["0005_c2_f0046985.jpg"], "query": ["0010_c1_f0000001.jpg"],
             "bounding_box_test": ["0010_c3_f0000002.jpg", "0011_c1_f0000003.jpg"]}
    sizes = {"0005_c2_f0046985.jpg": (30, 12), "0010_c1_f0000001.jpg": (16, 8), "0010_c3_f0000002.jpg": (16, 8),
             "0011_c1_f0000003.jpg": (16, 8)}
    root = market_folder(tmp_path / "duke", files, sizes)
    one_line_error(lambda: read_dukemtmc(root), "images are (3, 16, 8) but train images are (3, 30, 12)")
    ds = read_dukemtmc(root, size=(16, 8), mode="L")
    assert ds.train.images.shape == (1, 1, 16, 8) and ds.gallery.ids.tolist() == [10, 11] and ds.junk == 0


@pytest.mark.parametrize("change,fragments", [
    ({"query": ["0001_c1s1_001051_00.jpg", "0003_c2s1_000010_00.jpg", "person.jpg"]}, ["person.jpg has no identity"]),
    ({"query": ["0000_c1s1_001051_00.jpg"]}, ["has no identity (0000 marks a distractor, allowed only in the gallery)"]),
    ({"bounding_box_train": ["-1_c1s1_000451_03.jpg"]}, ["has no identity (-001 marks junk"]),
    # identity 0003's other gallery image moves to the query's camera: only a same-camera match is left
    ({"bounding_box_test": ["0001_c4s2_000301_02.jpg", "0003_c2s1_004400_01.jpg"]},
     ["query 0003_c2s1_000010_00.jpg (identity 3, camera 2) has no gallery image of its identity from another camera"]),
    ({"bounding_box_test": ["0001_c4s2_000301_02.jpg"]}, ["(identity 3, camera 2) has no gallery image"]),
    ({"bounding_box_test": []}, ["bounding_box_test is missing"]),
    ({"bounding_box_test": ["-1_c1s1_000401_03.jpg"]}, ["bounding_box_test has only junk images"]),
])
def test_bad_reid_folders_are_one_line(tmp_path, change, fragments):
    files = {**MARKET, **change}
    root = market_folder(tmp_path / "market", {k: v for k, v in files.items() if v})
    one_line_error(lambda: read_market1501(root), *fragments)


# --- metrics --------------------------------------------------------------------------------------------------------


def test_cmc_and_map_of_a_ranking_computed_by_hand():
    # one query (identity 1, camera 1); the gallery at distances 1..5 along one axis:
    #   d=1 identity 1 camera 1 -> same camera: removed
    #   d=2 identity 2          -> rank 1, miss
    #   d=3 identity 1 camera 2 -> rank 2, hit: precision 1/2
    #   d=4 identity 3          -> rank 3, miss
    #   d=5 identity 1 camera 3 -> rank 4, hit: precision 2/4
    gallery = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    got = reid_metrics(torch.zeros(1, 1), torch.tensor([1]), torch.tensor([1]), gallery,
                       torch.tensor([1, 2, 1, 3, 1]), torch.tensor([1, 2, 2, 1, 3]), ranks=(1, 2, 5))
    assert got == {"rank1": 0.0, "rank2": 1.0, "rank5": 1.0, "map": pytest.approx((1 / 2 + 2 / 4) / 2)}


def brute_force(qf, q_ids, q_cams, gf, g_ids, g_cams, ks, distance):
    """CMC and mAP one query at a time, distances by the formula, AP by scikit-learn over the kept gallery."""
    hits = {k: 0 for k in ks}
    aps = []
    for q in range(len(qf)):
        rows = []
        for g in range(len(gf)):
            if g_ids[g] == q_ids[q] and g_cams[g] == q_cams[q]:
                continue
            if distance == "euclidean":
                d = math.sqrt(sum((a - b) ** 2 for a, b in zip(qf[q].tolist(), gf[g].tolist(), strict=True)))
            else:
                a, b = qf[q].tolist(), gf[g].tolist()
                d = 1 - sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) *
                                                                                   sum(y * y for y in b))
            rows.append((d, g, int(g_ids[g] == q_ids[q])))
        rows.sort()
        first = next(r for r, (_, _, m) in enumerate(rows, 1) if m)
        for k in ks:
            hits[k] += first <= k
        aps.append(average_precision_score([m for _, _, m in rows], [-d for d, _, _ in rows]))
    out = {f"rank{k}": hits[k] / len(qf) for k in ks}
    out["map"] = float(np.mean(aps))
    return out


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_metrics_equal_a_brute_force_loop(distance):
    g = torch.Generator().manual_seed(0)
    g_ids, g_cams = torch.randint(0, 8, (120,), generator=g), torch.randint(1, 4, (120,), generator=g)
    q_ids, q_cams = torch.randint(0, 8, (300,), generator=g), torch.randint(1, 4, (300,), generator=g)
    # features scattered around one centre per identity (so rankings are far from random); lonely queries go
    centres = 1.2 * torch.randn(8, 6, generator=g)
    gf = centres[g_ids] + torch.randn(120, 6, generator=g)
    qf = centres[q_ids] + torch.randn(300, 6, generator=g)
    ok = torch.tensor([bool(((g_ids == i) & (g_cams != c)).any()) for i, c in zip(q_ids, q_cams, strict=True)])
    qf, q_ids, q_cams = qf[ok], q_ids[ok], q_cams[ok]
    got = reid_metrics(qf, q_ids, q_cams, gf, g_ids, g_cams, ranks=(1, 5, 10), distance=distance)
    want = brute_force(qf, q_ids, q_cams, gf, g_ids, g_cams, (1, 5, 10), distance)
    assert got == pytest.approx(want, abs=1e-9)
    assert 0.2 < got["map"] < 0.9  # neither trivial nor random: the comparison means something


def test_a_query_without_a_match_from_another_camera_is_refused():
    one_line_error(lambda: reid_metrics(torch.zeros(2, 1), torch.tensor([1, 2]), torch.tensor([1, 1]),
                                        torch.ones(2, 1), torch.tensor([1, 2]), torch.tensor([2, 1])),
                   "query 1 (identity 2, camera 1) has no gallery image of its identity from another camera",
                   kind=ValueError)
    with pytest.raises(ValueError, match="distance must be one of euclidean, cosine"):
        reid_metrics(torch.zeros(1, 1), [1], [1], torch.ones(1, 1), [1], [2], distance="l1")


# --- the Fashion-MNIST analog ---------------------------------------------------------------------------------------


@needs_fashion
def test_the_fashion_reid_analog_follows_the_protocol_and_round_trips(tmp_path):
    from resprout.data.sources import load_source

    fashion = load_source("fashion-mnist", FASHION_DIR)
    kw = dict(n_train_ids=12, n_test_ids=6, n_distractor_ids=3, per_camera=2, query_cameras=2, seed=5)
    ds = fashion_reid(fashion, **kw)
    n_cams = len(CAMERAS)
    assert len(ds.train) == 12 * n_cams * 2 and len(ds.query) == 6 * 2
    assert len(ds.gallery) == 6 * (n_cams * 2 - 2) + 3 * n_cams * 2
    assert ds.input_shape == (1, 32, 32)
    train_ids, query_ids, gallery_ids = (set(s.ids.tolist()) for s in (ds.train, ds.query, ds.gallery))
    assert not train_ids & gallery_ids and query_ids < gallery_ids and len(gallery_ids - query_ids) == 3  # open set
    for identity in query_ids:  # one query per chosen camera, from two different cameras
        assert sorted(ds.query.cameras[ds.query.ids == identity].tolist()) == \
            sorted(set(ds.query.cameras[ds.query.ids == identity].tolist())) and \
            int((ds.query.ids == identity).sum()) == 2
    again = fashion_reid(fashion, **kw)
    assert all(torch.equal(a.images, b.images) for a, b in zip(ds.splits().values(), again.splits().values(),
                                                               strict=True))
    back = read_market1501(write_market1501(ds, tmp_path / "market"), mode="L")
    for name, split in ds.splits().items():
        other = back.splits()[name]
        assert torch.equal(other.images, split.images) and torch.equal(other.ids, split.ids)
        assert torch.equal(other.cameras, split.cameras)


def test_the_fashion_reid_analog_holds_out_classes():
    """Items whose gray level encodes their class (20 + 20 c everywhere): each rendered image's class is read back
    from the median of its centre through its camera's exposure, another way than the generator's bookkeeping."""
    from resprout.data.dataset import Dataset, Split

    def split(n):
        labels = torch.arange(n) % 10
        images = (20 + 20 * labels).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 28, 28).contiguous()
        return Split(images, labels)

    fake = Dataset("classes-as-gray", split(200), split(100), None, [str(c) for c in range(10)])
    ds = fashion_reid(fake, n_train_ids=30, n_test_ids=15, n_distractor_ids=5, train_classes=(0, 3, 4), seed=2)

    def classes(part):
        centre = part.images[:, 0, 12:20, 12:20].float().flatten(1).median(dim=1).values
        cams = [CAMERAS[c - 1] for c in part.cameras.tolist()]
        value = torch.tensor([(v - c.offset) / c.gain for v, c in zip(centre.tolist(), cams, strict=True)])
        return set(((value - 20) / 20).round().long().tolist())

    assert classes(ds.train) == {0, 3, 4}
    assert classes(ds.query) | classes(ds.gallery) <= {1, 2, 5, 6, 7, 8, 9}
    assert len(classes(ds.gallery)) >= 4
